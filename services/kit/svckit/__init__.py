"""svckit"""
