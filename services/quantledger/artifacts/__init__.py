"""Artifacts in S3-compatible storage (``store``): what a distributed job's steps read and write."""
