{{/*
Shared helpers. Every application component (gateway, identity, timesheets, approvals, audit) is
rendered by the same templates from its own block of values, so a rule (probes, security context,
labels) is written once and holds for every service.
*/}}

{{- define "timesheets.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "timesheets.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: <fullname>-<component>, at most 63 characters. */}}
{{- define "timesheets.componentName" -}}
{{- printf "%s-%s" (include "timesheets.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "timesheets.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. Call with the root context. */}}
{{- define "timesheets.labels" -}}
helm.sh/chart: {{ include "timesheets.chart" . }}
app.kubernetes.io/name: {{ include "timesheets.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: timesheets
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component's objects. Call with (dict "root" $ "component" "gateway"). */}}
{{- define "timesheets.componentLabels" -}}
{{ include "timesheets.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels of one component: stable across upgrades, never add to these. */}}
{{- define "timesheets.selectorLabels" -}}
app.kubernetes.io/name: {{ include "timesheets.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "timesheets.annotations" -}}
{{- with .Values.commonAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The application components this release runs, in migration order. identity is left out when an
external authorization server (Auth0) is used.
*/}}
{{- define "timesheets.components" -}}
{{- $c := list -}}
{{- if .Values.identity.enabled }}{{ $c = append $c "identity" }}{{ end -}}
{{- $c = concat $c (list "gateway" "timesheets" "approvals" "audit") -}}
{{- join " " $c -}}
{{- end -}}

{{/* Components that own a PostgreSQL schema, i.e. that the migration Job migrates, in order. */}}
{{- define "timesheets.migratedComponents" -}}
{{- $c := list -}}
{{- if .Values.identity.enabled }}{{ $c = append $c "identity" }}{{ end -}}
{{- $c = concat $c (list "timesheets" "approvals" "audit") -}}
{{- join " " $c -}}
{{- end -}}

{{/*
Who calls whom inside the release (each service's settings name the peers it reads: TIMESHEETS_URL,
APPROVALS_URL, AUDIT_URL). The peer URLs in each environment and the NetworkPolicies are both
derived from this one table. The gateway also calls the bundled identity provider (JWKS); the
provider calls audit (its outbox relay: its denials).
*/}}
{{- define "timesheets.calls" -}}
{{- toJson (dict "gateway" (list "timesheets" "approvals" "audit" "identity") "identity" (list "audit") "timesheets" (list "audit") "approvals" (list "timesheets" "audit") "audit" list) -}}
{{- end -}}

{{/* The fixed port of each component (docs/CONTRACTS.md). */}}
{{- define "timesheets.port" -}}
{{- $ports := dict "gateway" 8080 "identity" 9000 "timesheets" 8101 "approvals" 8102 "audit" 8103 -}}
{{- get $ports .component -}}
{{- end -}}

{{/* The metrics port of each component (METRICS_PORT; docs/CONTRACTS.md): never the public one. */}}
{{- define "timesheets.metricsPort" -}}
{{- $ports := dict "gateway" 9080 "identity" 9010 "timesheets" 9101 "approvals" 9102 "audit" 9103 -}}
{{- get $ports .component -}}
{{- end -}}

{{/* In-cluster base URL of a component. */}}
{{- define "timesheets.url" -}}
{{- printf "http://%s:%s" (include "timesheets.componentName" .) (include "timesheets.port" .) -}}
{{- end -}}

{{/*
Image reference of a component: registry/repository, then @digest when set, else :tag
(defaulting to the chart's appVersion). "latest" is refused so that a rollout is reproducible.
*/}}
{{- define "timesheets.image" -}}
{{- $img := .image -}}
{{- $registry := default .root.Values.image.registry .root.Values.global.imageRegistry -}}
{{- $tag := toString (default .root.Chart.AppVersion $img.tag) -}}
{{- if eq $tag "latest" -}}
{{- fail (printf "%s: image tag 'latest' is not allowed; pin a version or a digest" .what) -}}
{{- end -}}
{{- $repo := $img.repository -}}
{{- if $registry }}{{ $repo = printf "%s/%s" $registry $img.repository }}{{ end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{- define "timesheets.imagePullSecrets" -}}
{{- $secrets := concat (default list .Values.global.imagePullSecrets) (default list .Values.image.pullSecrets) -}}
{{- if $secrets -}}
imagePullSecrets:
{{- range $secrets }}
  - name: {{ . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/*
A user name or password percent-encoded for a URL's userinfo (RFC 3986 §3.2.1): every byte but the
unreserved A-Z a-z 0-9 - . _ ~ as %XX, so that '/', '?', '#', '@', ':', '%' and spaces in a password
(one given in the live Secret, say) neither end the authority early nor decode to another password.
Go's urlquery (url.QueryEscape) encodes exactly those bytes, but writes a space as '+', which in a
userinfo is a literal '+' (asyncpg and redis-py unquote, never unquote_plus): since QueryEscape writes
a '+' itself as %2B, every '+' it returns was a space, and becomes %20.
*/}}
{{- define "timesheets.userinfoEscape" -}}
{{- urlquery . | replace "+" "%20" -}}
{{- end -}}

{{/* Name of the Secret the chart generates (kept across upgrades). */}}
{{- define "timesheets.generatedSecretName" -}}
{{- printf "%s-generated" (include "timesheets.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The sender → receiver pairs that sign identities (svckit.identity.PAIRS): one key each, in the Secret
as identity-keys-<sender>-to-<receiver>, given to those two containers only. The bundled identity
provider's pair with audit (its denials' outbox relay) only when it runs (identity.enabled).
*/}}
{{- define "timesheets.identityPairs" -}}
{{- $pairs := list (list "gateway" "timesheets") (list "gateway" "approvals") (list "gateway" "audit") (list "approvals" "timesheets") (list "timesheets" "audit") (list "approvals" "audit") -}}
{{- if .Values.identity.enabled }}{{ $pairs = append $pairs (list "identity" "audit") }}{{ end -}}
{{- toJson $pairs -}}
{{- end -}}

{{/* Secret that holds the identity pair keys, the checkpoint key and the identity provider's secrets. */}}
{{- define "timesheets.appSecretName" -}}
{{- default (include "timesheets.generatedSecretName" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/*
The value of a generated key ring (svckit.keyring: kid:secret[,kid:secret…], the first one signs,
every one verifies) after one step of its rotation (secrets.rotation.*; docs/runbook.md): "" the
current value unchanged; "add" a fresh key named k<N+1> appended, verifying only (none while one is
waiting there already: every later render is the same); "promote" the key with the highest k<N>
first; "drop" the first key alone. An unnamed single secret (what the chart generated before) is
named k1 by any step: the same key, so what it made stays valid on every pod.
Call with (dict "current" <plain text> "step" <step> "fresh" <a new secret> "what" <values path>).
*/}}
{{- define "timesheets.rotatedKeys" -}}
{{- if not .step -}}
{{- .current -}}
{{- else -}}
{{- $entries := list -}}
{{- range $e := splitList "," .current -}}
{{- if trim $e -}}
{{- $entries = append $entries (trim $e) -}}
{{- end -}}
{{- end -}}
{{- if and (eq (len $entries) 1) (not (contains ":" (first $entries))) -}}
{{- $entries = list (printf "k1:%s" (first $entries)) -}}
{{- end -}}
{{- $newest := "" -}}
{{- $max := 0 -}}
{{- range $e := $entries -}}
{{- $kid := splitList ":" $e | first -}}
{{- if regexMatch "^k[0-9]+$" $kid -}}
{{- $n := trimPrefix "k" $kid | atoi -}}
{{- if gt $n $max -}}
{{- $max = $n -}}
{{- $newest = $e -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq .step "add" -}}
{{- if eq (len $entries) 1 -}}
{{- $entries = append $entries (printf "k%d:%s" (add1 $max) .fresh) -}}
{{- end -}}
{{- else if eq .step "promote" -}}
{{- if eq (len $entries) 1 -}}{{- /* nothing to promote: silently unchanged, a rotation taken for done */ -}}
{{- fail (printf "%s=promote: the ring holds one key; run the step add first (one helm upgrade), then promote (docs/runbook.md)" .what) -}}
{{- end -}}
{{- if not $newest -}}
{{- fail (printf "%s=promote: no key is named k<N> (the names this chart gives); change the keys in the Secret yourself (docs/runbook.md)" .what) -}}
{{- end -}}
{{- $entries = prepend (without $entries $newest) $newest -}}
{{- else if eq .step "drop" -}}
{{- $entries = list (first $entries) -}}
{{- end -}}
{{- join "," $entries -}}
{{- end -}}
{{- end -}}

{{/* secrets.rotation steps a Secret given by reference: refused (the chart cannot change it). */}}
{{/* The startup probe's budget must outlast a start's own bound (WORKER_START_SECONDS: the gateway's
gateway.workerStartSeconds; another component's own env.WORKER_START_SECONDS where set, else the kit's
default, 60 s; identity only when it runs): a hung import then ends with its one line naming the module and the hanging line
(svckit.appimport, docs/runbook.md), not with the kubelet's kill and nothing in the log. 10 s covers the
interpreter's start before the bound begins and the line's writing. */}}
{{- define "timesheets.checkStartBudget" -}}
{{- $startup := .Values.probes.startup -}}
{{- $budget := mul $startup.periodSeconds $startup.failureThreshold -}}
{{- $bound := float64 .Values.gateway.workerStartSeconds -}}
{{- $from := "gateway.workerStartSeconds" -}}
{{- range $c := splitList " " (include "timesheets.migratedComponents" .) -}}
{{- $own := index ((index $.Values $c).env | default dict) "WORKER_START_SECONDS" -}}
{{- $seconds := 60.0 -}}
{{- if $own -}}{{- $seconds = float64 $own -}}{{- end -}}
{{- if gt $seconds $bound -}}
{{- $bound = $seconds -}}
{{- $from = ternary (printf "%s.env.WORKER_START_SECONDS" $c) "the other components' default" (not (empty $own)) -}}
{{- end -}}
{{- end -}}
{{- if le (float64 $budget) (addf $bound 10.0) -}}
{{- fail (printf "probes.startup: periodSeconds x failureThreshold = %d s must exceed the start bound (%v s: %s) by more than 10 s, or the kubelet kills a hung start before it says where it hung; raise probes.startup.failureThreshold" (int64 $budget) $bound $from) -}}
{{- end -}}
{{- end -}}

{{- define "timesheets.checkRotation" -}}
{{- range $name, $step := .Values.secrets.rotation | default dict -}}
{{- if and $step $.Values.secrets.existingSecret -}}
{{- fail (printf "secrets.rotation.%s: the chart rotates the keys of the Secret it generates; with secrets.existingSecret write kid:secret[,kid:secret] into %s yourself (docs/runbook.md)" $name $.Values.secrets.existingSecret) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* True when the chart must generate a Secret (something is not provided by reference). */}}
{{- define "timesheets.needsGeneratedSecret" -}}
{{- $roles := .Values.databaseRoles -}}
{{- if or (not .Values.secrets.existingSecret) .Values.postgresql.enabled .Values.redis.enabled (and $roles.enabled (not $roles.existingSecret)) -}}
true
{{- end -}}
{{- end -}}

{{/*
The runtime database role of a component: <prefix><component> (databaseRoles.prefix, by default the
release name and _). Call with (dict "root" $ "component" "audit").
*/}}
{{- define "timesheets.databaseRole" -}}
{{- $prefix := .root.Values.databaseRoles.prefix -}}
{{- if not $prefix -}}
{{- $prefix = printf "%s_" (.root.Release.Name | lower | replace "-" "_" | replace "." "_") -}}
{{- end -}}
{{- $name := printf "%s%s" $prefix .component -}}
{{- if not (regexMatch "^[a-z_][a-z0-9_]{0,62}$" $name) -}}
{{- fail (printf "databaseRoles.prefix: role name %q is not a plain PostgreSQL name (lower-case letters, digits, _; at most 63); set databaseRoles.prefix" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/*
Where a component's runtime-password rotation stands after this render's step
(databaseRoles.rotation.<component>; docs/database-roles.md, "Rotating a runtime password"), from the
live generated Secret: a JSON object with "login" (the login the pods use: <role> or <role>_b),
"other" (the other one), "state" ("" one login; "standby" the other login added, no pod uses it;
"previous" the pods switched, the old login still logs in), "swap" (this step switches the passwords:
the standby's becomes the one in use) and "fresh" (this step draws the standby's password). The same
step again changes nothing, as for the key rings (timesheets.rotatedKeys). Deterministic: the
Secret and the Deployments compute the same. Call with (dict "root" $ "component" "audit").
*/}}
{{- define "timesheets.databaseRotation" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $role := include "timesheets.databaseRole" . -}}
{{- $second := printf "%s_b" $role -}}
{{- $step := get ($root.Values.databaseRoles.rotation | default dict) $c | default "" -}}
{{- if and $step (gt (len $second) 63) -}}
{{- fail (printf "databaseRoles.rotation.%s: role %s is too long for a second login (%s: at most 63 characters); use a shorter databaseRoles.prefix" $c $role $second) -}}
{{- end -}}
{{- $old := dict -}}
{{- if not $root.Values.databaseRoles.existingSecret -}}
{{- $old = get ((lookup "v1" "Secret" $root.Release.Namespace (include "timesheets.generatedSecretName" $root)) | default dict) "data" | default dict -}}
{{- end -}}
{{- $login := get $old (printf "database-login-%s" $c) | default "" | b64dec -}}
{{- $state := get $old (printf "database-rotation-%s" $c) | default "" | b64dec -}}
{{- if not (has $login (list $role $second)) -}}{{- /* none yet, or of another prefix: one login, the role */ -}}
{{- $login = $role -}}
{{- $state = "" -}}
{{- end -}}
{{- if not (has $state (list "standby" "previous")) -}}
{{- $state = "" -}}
{{- end -}}
{{- /* a step out of order would change nothing and say nothing: the operator would take a
     rotation for done (after a leak, the leaked password would keep working) */ -}}
{{- if and (eq $step "promote") (not $state) -}}
{{- fail (printf "databaseRoles.rotation.%s=promote: no second password was added yet; run the step add first (one helm upgrade), then promote (docs/database-roles.md, \"Rotating a runtime password\")" $c) -}}
{{- end -}}
{{- if and (eq $step "add") (eq $state "previous") -}}
{{- fail (printf "databaseRoles.rotation.%s=add: the last rotation's old login still logs in; run the step drop first (one helm upgrade), then add" $c) -}}
{{- end -}}
{{- $swap := false -}}
{{- $fresh := false -}}
{{- if and (eq $step "add") (not $state) -}}
{{- $state = "standby" -}}
{{- $fresh = true -}}
{{- else if and (eq $step "promote") (eq $state "standby") -}}
{{- $login = ternary $second $role (eq $login $role) -}}
{{- $state = "previous" -}}
{{- $swap = true -}}
{{- else if eq $step "drop" -}}
{{- $state = "" -}}
{{- end -}}
{{- dict "login" $login "other" (ternary $second $role (eq $login $role)) "state" $state "swap" $swap "fresh" $fresh | toJson -}}
{{- end -}}

{{/* databaseRoles.rotation steps with the role passwords given by reference: refused (the chart cannot change them). */}}
{{- define "timesheets.checkDatabaseRotation" -}}
{{- range $name, $step := .Values.databaseRoles.rotation | default dict -}}
{{- if and $step (not $.Values.databaseRoles.enabled) -}}
{{- fail (printf "databaseRoles.rotation.%s: the services connect as the owner (databaseRoles.enabled=false): there is no runtime password to rotate" $name) -}}
{{- end -}}
{{- if and $step $.Values.databaseRoles.existingSecret -}}
{{- fail (printf "databaseRoles.rotation.%s: the chart rotates the passwords of the Secret it generates; with databaseRoles.existingSecret write database-login-%s and database-other-password-%s into %s yourself (docs/database-roles.md, \"Rotating a runtime password\")" $name $name $name $.Values.databaseRoles.existingSecret) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret with each service's database-url-<service> (and database-password-<service>). */}}
{{- define "timesheets.databaseRolesSecretName" -}}
{{- default (include "timesheets.generatedSecretName" .) .Values.databaseRoles.existingSecret -}}
{{- end -}}

{{/*
Where the runtime roles' URLs point (databaseRoles without existingSecret): the demo PostgreSQL, or
externalDatabase.host/port/database. A list: host, port, database.
*/}}
{{- define "timesheets.databaseServer" -}}
{{- if .Values.postgresql.enabled -}}
{{- list (include "timesheets.componentName" (dict "root" . "component" "postgresql")) 5432 .Values.postgresql.database | toJson -}}
{{- else -}}
{{- $_ := include "timesheets.databaseSecretRef" . -}}{{- /* no database at all: that message first */ -}}
{{- $db := .Values.externalDatabase -}}
{{- if or (not $db.host) (not $db.database) -}}
{{- fail "databaseRoles: the services connect as their own roles; set externalDatabase.host and externalDatabase.database (their URLs are built from them), or give the URLs in databaseRoles.existingSecret, or set databaseRoles.enabled=false" -}}
{{- end -}}
{{- list $db.host (int $db.port) $db.database | toJson -}}
{{- end -}}
{{- end -}}

{{/* Where DATABASE_URL comes from: a (name, key) pair, or a clear failure. */}}
{{- define "timesheets.databaseSecretRef" -}}
{{- if .Values.postgresql.enabled -}}
name: {{ include "timesheets.generatedSecretName" . }}
key: database-url
{{- else if .Values.externalDatabase.existingSecret -}}
name: {{ .Values.externalDatabase.existingSecret }}
key: {{ .Values.externalDatabase.existingSecretUrlKey }}
{{- else -}}
{{- fail "no database: set postgresql.enabled=true (demo) or externalDatabase.existingSecret (a Secret holding DATABASE_URL)" -}}
{{- end -}}
{{- end -}}

{{/*
The external database's CA bundle (externalDatabase.caBundle) as a pod volume, or nothing. Mounted
read-only at /etc/timesheets/database-ca in every container that connects (services and migrations).
*/}}
{{- define "timesheets.databaseCaVolume" -}}
{{- $ca := .Values.externalDatabase.caBundle -}}
{{- if and (not .Values.postgresql.enabled) (or $ca.secretName $ca.configMapName) -}}
{{- if and $ca.secretName $ca.configMapName -}}
{{- fail "externalDatabase.caBundle: set secretName or configMapName, not both" -}}
{{- end -}}
- name: database-ca
  {{- if $ca.secretName }}
  secret:
    secretName: {{ $ca.secretName }}
    items:
      - key: {{ $ca.key }}
        path: ca.crt
  {{- else }}
  configMap:
    name: {{ $ca.configMapName }}
    items:
      - key: {{ $ca.key }}
        path: ca.crt
  {{- end }}
{{- end -}}
{{- end -}}

{{- define "timesheets.databaseCaMount" -}}
{{- if include "timesheets.databaseCaVolume" . -}}
- name: database-ca
  mountPath: /etc/timesheets/database-ca
  readOnly: true
{{- end -}}
{{- end -}}

{{/*
The external Redis's CA bundle (externalRedis.caBundle) as a pod volume, or nothing. Mounted read-only
at /etc/timesheets/redis-ca in every container that connects to Redis (REDIS_TLS_CA_FILE).
*/}}
{{- define "timesheets.redisCaVolume" -}}
{{- $ca := .Values.externalRedis.caBundle -}}
{{- if and (not .Values.redis.enabled) (or $ca.secretName $ca.configMapName) -}}
{{- if and $ca.secretName $ca.configMapName -}}
{{- fail "externalRedis.caBundle: set secretName or configMapName, not both" -}}
{{- end -}}
- name: redis-ca
  {{- if $ca.secretName }}
  secret:
    secretName: {{ $ca.secretName }}
    items:
      - key: {{ $ca.key }}
        path: ca.crt
  {{- else }}
  configMap:
    name: {{ $ca.configMapName }}
    items:
      - key: {{ $ca.key }}
        path: ca.crt
  {{- end }}
{{- end -}}
{{- end -}}

{{- define "timesheets.redisCaMount" -}}
{{- if include "timesheets.redisCaVolume" . -}}
- name: redis-ca
  mountPath: /etc/timesheets/redis-ca
  readOnly: true
{{- end -}}
{{- end -}}

{{/* The components that connect to Redis, each as a Redis user of its own (svckit.redisacl). */}}
{{- define "timesheets.redisComponents" -}}
{{- $c := list "gateway" -}}
{{- if .Values.identity.enabled }}{{ $c = append $c "identity" }}{{ end -}}
{{- $c = concat $c (list "timesheets" "approvals" "audit") -}}
{{- join " " $c -}}
{{- end -}}

{{/*
The bundled Redis's admin user (the operators'): the read-only diagnostics only, no key, no channel;
svckit.redisacl.ADMIN_RULES (tests/packaging/test_redis_acl.py keeps the two equal).
*/}}
{{- define "timesheets.redisAdminRules" -}}
resetchannels -@all +ping +select +info +dbsize +slowlog|get +slowlog|len +client|list +client|info +memory|stats +memory|doctor +latency|latest +latency|history +latency|doctor +acl|log +acl|whoami
{{- end -}}

{{/*
The ACL rules of a component's Redis user, for keys under config.redisKeyPrefix: the same lines as
services/kit/svckit/redisacl.py renders (tests/packaging/test_redis_acl.py checks they are equal).
Call with (dict "root" $ "component" "gateway").
*/}}
{{- define "timesheets.redisAclRules" -}}
{{- if regexMatch "[\\s[:cntrl:]]" .root.Values.config.redisKeyPrefix -}}
{{- fail "config.redisKeyPrefix: no spaces or control characters with the bundled Redis (redis.enabled): its ACL file separates rules by spaces, and Redis would not start" -}}
{{- end -}}
{{- $p := regexReplaceAll "([*?\\[\\]\\\\])" .root.Values.config.redisKeyPrefix "\\${1}" -}}
{{- $base := "resetchannels -@all +ping +select" -}}
{{- $tail := "-@dangerous -@admin" -}}
{{- if eq .component "gateway" -}}
{{ $base }} +get +set +incrby +expire +xread {{ $tail }} ~{{ $p }}gateway:* ~{{ $p }}dpop-jti:* %R~{{ $p }}revocations
{{- else if eq .component "identity" -}}
{{ $base }} +get +set +incr +incrby +decr +expire +pttl +eval +exists +xadd +xtrim +time {{ $tail }} ~{{ $p }}identity:* ~{{ $p }}identity-dpop-jti:* ~{{ $p }}revocations ~{{ $p }}revocations:complete
{{- else if eq .component "audit" -}}
{{ $base }} +set +exists +get +eval {{ $tail }} ~{{ $p }}identity-replay:audit:* ~{{ $p }}audit:*
{{- else -}}
{{ $base }} +set +exists {{ $tail }} ~{{ $p }}identity-replay:{{ .component }}:*
{{- end -}}
{{- end -}}

{{/*
Where a component's REDIS_URL comes from: its own Redis user's URL (bundled Redis: the generated
Secret's redis-url-<component>; external: externalRedis.existingSecret's redis-url-<component>, or the
one shared key when externalRedis.sharedCredential). Required: Redis holds only losable state, but the
API services keep their replay memory of signed requests there; without it every write takes a
database round trip more (svckit.replayfallback) with a weaker replay guarantee, rate limits are not
enforced, while /readyz stays 200, so a release without one would install "healthy" and degraded for
good. Call with (dict "root" $ "component" "gateway").
*/}}
{{- define "timesheets.redisSecretRef" -}}
{{- $root := .root -}}
{{- if $root.Values.redis.enabled -}}
name: {{ include "timesheets.generatedSecretName" $root }}
key: redis-url-{{ .component }}
{{- else if $root.Values.externalRedis.existingSecret -}}
{{- if kindIs "invalid" $root.Values.externalRedis.sharedCredential -}}
{{- fail "externalRedis.sharedCredential: say whether each component has its own Redis user (false: the Secret holds redis-url-<component>, one URL each; docs/CONTRACTS.md, \"Redis keys and who may touch them\") or every component shares the URL at externalRedis.existingSecretUrlKey (true: what a Secret from before 0.2.0 holds; any compromised component can then write what the others rely on)" -}}
{{- end -}}
name: {{ $root.Values.externalRedis.existingSecret }}
{{- if $root.Values.externalRedis.sharedCredential }}
key: {{ $root.Values.externalRedis.existingSecretUrlKey }}
{{- else }}
key: redis-url-{{ .component }}
{{- end }}
{{- else -}}
{{- fail "no Redis: set redis.enabled=true (demo) or externalRedis.existingSecret (a Secret holding each component's REDIS_URL, redis-url-<component>); the API services keep their replay memory of signed requests there (their database only while it is away)" -}}
{{- end -}}
{{- end -}}

{{/* OIDC issuers: the first one is the bundled identity provider's own issuer when it is enabled. */}}
{{- define "timesheets.oidcIssuers" -}}
{{- if not .Values.oidc.issuers -}}
{{- fail "oidc.issuers must name at least one issuer URL (the bundled identity service's public URL, or e.g. https://abc.eu.auth0.com/)" -}}
{{- end -}}
{{- join "," .Values.oidc.issuers -}}
{{- end -}}

{{/*
Environment of one component. Call with (dict "root" $ "component" "gateway").
Names and meanings: docs/CONTRACTS.md and each service's settings module.
*/}}
{{- define "timesheets.env" -}}
{{- $c := .component -}}
{{- $values := get .root.Values $c -}}
{{- $chart := include "timesheets.chartEnv" . -}}
{{- /* what the chart sets, the probes, Service, NetworkPolicy and ServiceMonitor rely on, and secrets
     come by reference: an extra entry of the same name would win (the later one) and undo that */}}
{{- $set := list -}}
{{- range fromYamlArray $chart }}{{ $set = append $set .name }}{{ end -}}
{{- range $name, $value := $values.env }}
{{- if has $name $set }}
{{- fail (printf "%s.env.%s: the chart sets %s for this container; change it through the chart's own values" $c $name $name) }}
{{- end }}
{{- end }}
{{- range $values.extraEnv }}
{{- if has .name $set }}
{{- fail (printf "%s.extraEnv: the chart sets %s for this container; change it through the chart's own values" $c .name) }}
{{- end }}
{{- end }}
{{- $chart }}
{{- range $name, $value := $values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- with $values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The environment the chart itself sets for one component (see timesheets.env). */}}
{{- define "timesheets.chartEnv" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $values := get $root.Values $c -}}
{{- $usesDb := has $c (splitList " " (include "timesheets.migratedComponents" $root)) -}}
{{- /* the API services keep the replay memory of signed requests in Redis (svckit.replay), not their migrations */}}
{{- $usesRedis := or (has $c (list "gateway" "identity")) (and (has $c (list "timesheets" "approvals" "audit")) (not .migration)) -}}
- name: BIND_HOST
  value: {{ $root.Values.network.bindHost | quote }}
- name: PORT
  value: {{ include "timesheets.port" . | quote }}
- name: METRICS_PORT
  value: {{ include "timesheets.metricsPort" . | quote }}
- name: LOG_LEVEL
  value: {{ default $root.Values.config.logLevel $values.logLevel | quote }}
- name: SHUTDOWN_TIMEOUT_SECONDS
  value: {{ $root.Values.config.shutdownTimeoutSeconds | quote }}
- name: REQUEST_HEAD_TIMEOUT_SECONDS
  value: {{ $root.Values.config.requestHeadTimeoutSeconds | quote }}
- name: REQUEST_BODY_TIMEOUT_SECONDS
  value: {{ $root.Values.config.requestBodyTimeoutSeconds | quote }}
- name: RESPONSE_SEND_TIMEOUT_SECONDS
  value: {{ $root.Values.config.responseSendTimeoutSeconds | quote }}
- name: MAX_CONNECTIONS_PER_WORKER
  value: {{ $root.Values.config.maxConnectionsPerWorker | quote }}
{{- if ne $c "gateway" }}
- name: REQUEST_BODY_BUFFER_BYTES
  value: {{ $root.Values.config.requestBodyBufferBytes | int64 | quote }}
{{- end }}
- name: IDENTITY_MAX_SKEW_SECONDS
  value: {{ $root.Values.config.identityMaxSkewSeconds | quote }}
{{- if not .migration }}
{{- /* the identity keys of the pairs this component is an end of, and no others (never in a migration) */}}
{{- range $pair := include "timesheets.identityPairs" $root | fromJsonArray }}
{{- if has $c $pair }}
- name: {{ printf "IDENTITY_KEYS_%s_TO_%s" (index $pair 0) (index $pair 1) | upper }}
  valueFrom:
    secretKeyRef:
      name: {{ include "timesheets.appSecretName" $root }}
      key: {{ printf "identity-keys-%s-to-%s" (index $pair 0) (index $pair 1) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $peer := get (include "timesheets.calls" $root | fromJson) $c }}
{{- if ne $peer "identity" }}
- name: {{ upper $peer }}_URL
  value: {{ include "timesheets.url" (dict "root" $root "component" $peer) | quote }}
{{- end }}
{{- end }}
{{- if and (has $c (list "identity" "timesheets" "approvals")) (not .migration) }}
{{- /* the services with an outbox (svckit.outbox): its relay's receipt check (svckit.receipts) */}}
- name: OUTBOX_RECEIPT_CHECK_INTERVAL_SECONDS
  value: {{ $root.Values.config.outboxReceiptCheckIntervalSeconds | quote }}
- name: OUTBOX_REQUEST_TIMEOUT_SECONDS
  value: {{ $root.Values.config.outboxRequestTimeoutSeconds | quote }}
{{- end }}
{{- if has $c (list "gateway" "identity") }}
- name: OIDC_AUDIENCE
  value: {{ $root.Values.oidc.audience | quote }}
{{- end }}
{{- if $usesDb }}
{{- $roles := $root.Values.databaseRoles }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
{{- if and $roles.enabled (not .migration) }}
      {{- /* the service's own runtime role; the owner's URL reaches the migration containers only */}}
      name: {{ include "timesheets.databaseRolesSecretName" $root }}
      key: database-url-{{ $c }}
{{- else }}
{{ include "timesheets.databaseSecretRef" $root | indent 6 }}
{{- end }}
{{- if and $roles.enabled .prepareRole }}
- name: DB_RUNTIME_ROLE
  value: {{ include "timesheets.databaseRole" . | quote }}
- name: DB_MANAGE_ROLES
  value: {{ $roles.manage | quote }}
{{- /* the login the pods use while a password rotates (absent: the role itself) */}}
- name: DB_RUNTIME_LOGIN
  valueFrom:
    secretKeyRef:
      name: {{ include "timesheets.databaseRolesSecretName" $root }}
      key: database-login-{{ $c }}
      optional: true
{{- if $roles.manage }}
- name: DB_RUNTIME_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "timesheets.databaseRolesSecretName" $root }}
      key: database-password-{{ $c }}
{{- /* the other login's password during a rotation's overlap (absent: the Job disables that login) */}}
- name: DB_RUNTIME_OTHER_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "timesheets.databaseRolesSecretName" $root }}
      key: database-other-password-{{ $c }}
      optional: true
{{- end }}
{{- end }}
{{- if not $root.Values.postgresql.enabled }}
{{- with $root.Values.externalDatabase.sslMode }}
- name: DB_SSLMODE
  value: {{ . | quote }}
{{- end }}
{{- if include "timesheets.databaseCaVolume" $root }}
- name: DB_SSLROOTCERT
  value: /etc/timesheets/database-ca/ca.crt
{{- else if $root.Values.externalDatabase.caBundle.useSystemTrustStore }}
- name: DB_SSLROOTCERT
  value: system
{{- end }}
{{- end }}
- name: DB_POOL_MIN
  value: {{ $root.Values.config.dbPoolMin | quote }}
- name: DB_POOL_MAX
  value: {{ $root.Values.config.dbPoolMax | quote }}
{{- /* how long a request waits on a hung Postgres (svckit.db): for a connection, for one statement's
     answer; the audit service's own statement bound (its trail's reads run long statements) */}}
- name: DB_CONNECT_TIMEOUT_SECONDS
  value: {{ $root.Values.config.dbConnectTimeoutSeconds | quote }}
- name: DB_STATEMENT_TIMEOUT_SECONDS
  value: {{ (eq $c "audit" | ternary $values.dbStatementTimeoutSeconds $root.Values.config.dbStatementTimeoutSeconds) | quote }}
{{- /* how often a pod asks which Postgres server DATABASE_URL leads to, and closes the pooled
     connections on another one (svckit.dbserver: a failover whose old primary stays up) */}}
- name: DB_LEADER_CHECK_SECONDS
  value: {{ $root.Values.config.dbLeaderCheckSeconds | quote }}
{{- /* lock waits (svckit.db, svckit.migrations): a request's, below the statement bound, and a
     migration's, below a request's (so a request queued behind a migration waits and is not
     refused); the services refuse to start otherwise: refused here instead, where helm runs */}}
{{- $statement := eq $c "audit" | ternary $values.dbStatementTimeoutSeconds $root.Values.config.dbStatementTimeoutSeconds }}
{{- $lock := $root.Values.config.dbLockTimeoutSeconds }}
{{- if ge (float64 $lock) (float64 $statement) }}
{{- fail (printf "config.dbLockTimeoutSeconds (%v) must be below the statement bound of %s (%v): a lock wait would be cut by the driver (a 503 that says unreachable, the session closed) before the database gives up" $lock $c $statement) }}
{{- end }}
{{- if ge (float64 $root.Values.migrations.lockTimeoutSeconds) (float64 $lock) }}
{{- fail (printf "migrations.lockTimeoutSeconds (%v) must be below config.dbLockTimeoutSeconds (%v): requests queued behind a migration's lock would be refused before it gives up" $root.Values.migrations.lockTimeoutSeconds $lock) }}
{{- end }}
- name: DB_LOCK_TIMEOUT_SECONDS
  value: {{ $lock | quote }}
- name: DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS
  value: {{ $root.Values.config.dbIdleInTransactionTimeoutSeconds | quote }}
- name: DB_MIGRATION_LOCK_TIMEOUT_SECONDS
  value: {{ $root.Values.migrations.lockTimeoutSeconds | quote }}
- name: DB_MIGRATION_LOCK_ATTEMPTS
  value: {{ $root.Values.migrations.lockAttempts | quote }}
{{- if eq $c "audit" }}
{{- /* the trail's reads: one statement's limit (SET LOCAL statement_timeout), also in the migration
     containers, which load the service's settings. The service refuses to start when it exceeds the
     statement bound (audit/settings.py: the driver would cut the statement, 503, before the database's
     own limit, 422); refused here instead, where the platform team runs helm, not in a pod's log */}}
{{- if gt (float64 $values.readTimeoutSeconds) (float64 $values.dbStatementTimeoutSeconds) }}
{{- fail (printf "audit.readTimeoutSeconds (%v) is above audit.dbStatementTimeoutSeconds (%v): the audit service refuses to start with AUDIT_READ_TIMEOUT_SECONDS above DB_STATEMENT_TIMEOUT_SECONDS (a listing's statement would be cut by the driver, 503, before the database's own limit, 422); lower the first or raise the second" $values.readTimeoutSeconds $values.dbStatementTimeoutSeconds) }}
{{- end }}
- name: AUDIT_READ_TIMEOUT_SECONDS
  value: {{ $values.readTimeoutSeconds | quote }}
{{- end }}
{{- end }}
{{- if $usesRedis }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
{{ include "timesheets.redisSecretRef" (dict "root" $root "component" $c) | indent 6 }}
- name: REDIS_KEY_PREFIX
  value: {{ $root.Values.config.redisKeyPrefix | quote }}
{{- if include "timesheets.redisCaVolume" $root }}
- name: REDIS_TLS_CA_FILE
  value: /etc/timesheets/redis-ca/ca.crt
{{- end }}
{{- if and (not $root.Values.redis.enabled) (ne $root.Values.externalRedis.tlsVerify "full") }}
- name: REDIS_TLS_VERIFY
  value: {{ $root.Values.externalRedis.tlsVerify | quote }}
{{- end }}
{{- end }}
{{- if eq $c "gateway" }}
- name: OIDC_ISSUER
  value: {{ include "timesheets.oidcIssuers" $root | quote }}
- name: GATEWAY_WORKERS
  value: {{ $values.workers | quote }}
- name: WORKER_STUCK_SECONDS
  value: {{ $values.workerStuckSeconds | quote }}
- name: WORKER_START_SECONDS
  value: {{ $values.workerStartSeconds | quote }}
{{- /* the workers' metrics files, in the /tmp emptyDir: one directory by name, which python -m gateway
     clears of the previous run's files at each start (a fresh temporary directory at each container
     restart piled up in the emptyDir, which outlives the container) */}}
- name: PROMETHEUS_MULTIPROC_DIR
  value: /tmp/gateway-metrics
- name: GATEWAY_RESPONSE_BUFFER_BYTES
  value: {{ $values.responseBufferBytes | int64 | quote }}
- name: GATEWAY_REQUEST_BODY_BUFFER_BYTES
  value: {{ $values.requestBodyBufferBytes | int64 | quote }}
- name: GATEWAY_MAX_IN_FLIGHT_PER_SUBJECT
  value: {{ $values.maxInFlightPerSubject | int64 | quote }}
- name: SPA_AUTH_ISSUER
  value: {{ default (first $root.Values.oidc.issuers) $values.spa.authIssuer | quote }}
- name: SPA_CLIENT_ID
  value: {{ $values.spa.clientId | quote }}
- name: SPA_AUDIENCE
  value: {{ $root.Values.oidc.audience | quote }}
- name: SPA_AUTH_FLOW
  value: {{ $values.spa.authFlow | quote }}
{{- with $values.spa.scopes }}
- name: SPA_SCOPES
  value: {{ . | quote }}
{{- end }}
{{- if include "timesheets.gatewayIssuers" $root }}
- name: GATEWAY_ISSUERS_FILE
  value: /etc/timesheets/gateway/issuers.yaml
{{- end }}
- name: CORS_ORIGINS
  value: {{ join "," ($values.corsOrigins | default list) | quote }}
{{- with $values.trustedProxies }}
- name: GATEWAY_TRUSTED_PROXIES
  value: {{ join "," . | quote }}
{{- end }}
- name: GATEWAY_PROXY_HEADER
  value: {{ $values.proxyHeader | default "x-forwarded-for" | quote }}
- name: DPOP_POLICY
  value: {{ $values.dpop.policy | quote }}
- name: GATEWAY_CACHE_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "timesheets.appSecretName" $root }}
      key: gateway-cache-secret
      {{- /* an existingSecret from before this key: each gateway process then draws its own */}}
      optional: true
{{- if $values.dpop.nonces }}
- name: DPOP_NONCES
  value: "true"
- name: DPOP_NONCE_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "timesheets.appSecretName" $root }}
      key: dpop-nonce-secret
{{- end }}
{{- end }}
{{- if and (eq $c "audit") (not .migration) }}
- name: AUDIT_CHECKPOINT_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "timesheets.appSecretName" $root }}
      key: audit-checkpoint-keys
{{- end }}
{{- if eq $c "identity" }}
{{- /* Authlib refuses every authorization request on a plain-http issuer off the loopback interface
     (RFC 9700 §2.6), and the service refuses to start with one: an explicit choice here, for a test
     cluster without TLS (chart-testing), refused at render time otherwise */}}
{{- $issuer := urlParse (first $root.Values.oidc.issuers) }}
{{- $loopback := or (eq $issuer.hostname "localhost") (hasPrefix "127." $issuer.hostname) (eq $issuer.hostname "::1") }}
{{- if and (eq $issuer.scheme "http") (not $loopback) (not $values.allowInsecureHttp) }}
{{- fail (printf "oidc.issuers[0] %s is plain http off the loopback interface: the bundled identity provider would refuse every sign-in on it; use https, or set identity.allowInsecureHttp: true on a test cluster without TLS" (first $root.Values.oidc.issuers)) }}
{{- end }}
- name: IDENTITY_ISSUER
  value: {{ first $root.Values.oidc.issuers | quote }}
- name: IDENTITY_ALLOW_INSECURE_HTTP
  value: {{ $values.allowInsecureHttp | toString | quote }}
- name: IDENTITY_KEY_ENCRYPTION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "timesheets.appSecretName" $root }}
      key: identity-key-encryption-key
- name: IDENTITY_SESSION_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "timesheets.appSecretName" $root }}
      key: identity-session-secret
- name: BATCH_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "timesheets.appSecretName" $root }}
      key: batch-client-secret
{{- with $values.trustedProxies }}
- name: IDENTITY_TRUSTED_PROXIES
  value: {{ join "," . | quote }}
{{- end }}
- name: IDENTITY_PROXY_HEADER
  value: {{ $values.proxyHeader | default "x-forwarded-for" | quote }}
- name: AUTHORIZE_CODE_WINDOW_SECONDS
  value: {{ $values.authorizeCodeWindowSeconds | quote }}
- name: TOKEN_MAX_FAILURES_PER_ADDRESS
  value: {{ $values.tokenMaxFailuresPerAddress | quote }}
- name: TOKEN_FAILURE_WINDOW_SECONDS
  value: {{ $values.tokenFailureWindowSeconds | quote }}
- name: PASSWORD_HASH_MAX_WAITING
  value: {{ $values.passwordHashMaxWaiting | quote }}
- name: PASSWORD_HASH_MAX_WAIT_SECONDS
  value: {{ $values.passwordHashMaxWaitSeconds | quote }}
{{- if $values.dpop.nonces }}
- name: DPOP_NONCES
  value: "true"
{{- end }}
{{- end }}
{{- end -}}

{{/*
The gateway's GATEWAY_ISSUERS_FILE document, or nothing when no issuer needs its own settings.
With the bundled identity provider its keys are fetched from the in-cluster Service: the public issuer
URL (what browsers use, e.g. a port-forwarded http://localhost:9000/) may not resolve from a pod.
*/}}
{{- define "timesheets.gatewayIssuers" -}}
{{- $issuers := deepCopy (.Values.gateway.issuers | default dict) -}}
{{- if and .Values.identity.enabled .Values.gateway.bundledIdentityJwksInCluster .Values.oidc.issuers -}}
{{- $own := first .Values.oidc.issuers -}}
{{- $entry := get $issuers $own | default dict -}}
{{- if not (hasKey $entry "jwks_uri") -}}
{{- $_ := set $entry "jwks_uri" (printf "%s/.well-known/jwks.json" (include "timesheets.url" (dict "root" . "component" "identity"))) -}}
{{- end -}}
{{- $_ := set $issuers $own $entry -}}
{{- end -}}
{{- range $issuer, $_ := $issuers -}}
{{- if not (has $issuer $.Values.oidc.issuers) -}}
{{- fail (printf "gateway.issuers: %s is not one of oidc.issuers" $issuer) -}}
{{- end -}}
{{- end -}}
{{- if $issuers -}}
{{ toYaml (dict "issuers" $issuers) }}
{{- end -}}
{{- end -}}

{{/*
Containers given in values (initContainers, sidecars): as written, except that one without a
securityContext gets the chart's restricted one, so that adding a sidecar keeps the pod admissible
under the restricted Pod Security Standard. Call with (dict "root" $ "containers" list).
*/}}
{{- define "timesheets.extraContainers" -}}
{{- range $c := .containers }}
{{- $container := deepCopy $c }}
{{- if not (hasKey $container "securityContext") }}
{{- $_ := set $container "securityContext" $.root.Values.containerSecurityContext }}
{{- end }}
- {{ toYaml $container | nindent 2 | trim }}
{{- end }}
{{- end -}}

{{/* The restricted Pod Security Standard, pod level. */}}
{{- define "timesheets.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end -}}

{{/* The restricted Pod Security Standard, container level. */}}
{{- define "timesheets.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end -}}

{{/*
The generation of the contracts between this release's pods: the signed identity, the internal
routes, the audit chain's lock. Pods of one generation can serve side by side in a rolling update;
pods of two cannot (docs/upgrades.md, "Breaking boundaries"): 0.1.0's pods sign tsp-identity-v1 with
one shared key, and append to the audit chain under an advisory lock, which this generation neither
accepts nor takes. Raise it only with such a change, and say so in docs/upgrades.md.
*/}}
{{- define "timesheets.contractGeneration" -}}2{{- end -}}

{{- define "timesheets.contractAnnotation" -}}timesheets.abc.example/contract-generation{{- end -}}

{{/*
A component's Deployment strategy (rollout.strategy): RollingUpdate or Recreate. "auto" is
RollingUpdate, except on an upgrade whose live Deployment runs pods of another contract generation
(timesheets.contractGeneration; 0.1.0's carry none): then Recreate, so that old and new pods never
serve side by side. That costs a short outage of each component once, where a rolling update would
answer 401 between old and new pods for its whole length. `lookup` finds nothing under `helm template`
(GitOps): there, set rollout.strategy=Recreate for that one upgrade.
*/}}
{{- define "timesheets.rolloutStrategy" -}}
{{- $root := .root -}}
{{- $strategy := $root.Values.rollout.strategy -}}
{{- if ne $strategy "auto" -}}
{{- $strategy -}}
{{- else -}}
{{- $live := lookup "apps/v1" "Deployment" $root.Release.Namespace (include "timesheets.componentName" .) | default dict -}}
{{- $annotations := dig "spec" "template" "metadata" "annotations" (dict) $live -}}
{{- $generation := get $annotations (include "timesheets.contractAnnotation" $root) -}}
{{- if and $live (ne $generation (include "timesheets.contractGeneration" $root)) -}}
Recreate
{{- else -}}
RollingUpdate
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A Service's IP families (network.ipFamilyPolicy, network.ipFamilies): nothing when unset, so the
     cluster's default applies (SingleStack of its primary family). */}}
{{- define "timesheets.ipFamilies" -}}
{{- if and (gt (len .Values.network.ipFamilies) 1) (has .Values.network.ipFamilyPolicy (list "" "SingleStack")) -}}
{{- fail "network.ipFamilies: two families need network.ipFamilyPolicy PreferDualStack or RequireDualStack (a SingleStack Service, the default, has one)" -}}
{{- end -}}
{{- with .Values.network.ipFamilyPolicy }}
ipFamilyPolicy: {{ . }}
{{- end }}
{{- with .Values.network.ipFamilies }}
ipFamilies:
{{- range . }}
  - {{ . }}
{{- end }}
{{- end }}
{{- end -}}
