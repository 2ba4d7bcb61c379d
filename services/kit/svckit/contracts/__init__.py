"""The platform's contracts, written once and imported by both ends.

=====================  =========================================================================
module                 what it defines (who sends it → who reads it)
=====================  =========================================================================
``identity``           :class:`~svckit.identity.Identity` (gateway → services, re-exported) and
                       :class:`Person`, how a user appears in documents
``timesheets``         the entry: requests (``EntryIn``, ``UploadIn``, ``ListQuery``), the response
                       (``Entry``, ``EntryPage``, ``UploadResult``), and the internal apply step
                       (``ApplyDecision``: approvals → timesheets)
``approvals``          the decision: ``DecisionIn`` (client → approvals), ``Decision`` (answer)
``audit``              the audit event (``AuditEvent``: writers' outboxes and the gateway → audit)
                       and what auditors read (``AuditRecord``, ``EventsPage``, ``VerifyResult``)
``problem``            RFC 9457 problem details, every error of every part
``fields``             the field types the models share, each with its validator and its schema
``operations``         every HTTP operation: path, models, answers; the OpenAPI documents of the
                       services and the gateway's ``/api/openapi.json`` are generated from it
=====================  =========================================================================

Services validate requests with these models (:func:`svckit.body.parse_body`,
:func:`svckit.query.parse_query`) and build responses from them; the SPA's TypeScript types are
generated from the published document (``spa/src/api/schema.d.ts``). docs/CONTRACTS.md lists where
each contract lives and which test keeps each copy honest.
"""
