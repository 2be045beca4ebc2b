"""Who is asking, and what they may do: principals, API tokens, quotas and the audit log.

Domain code: no grpc, no HTTP. The API layers (grpc_api, any HTTP surface) authenticate a call into a
``Principal`` and hand it to the domain, which decides what that principal may see and do.
"""
