"""Tenants: every job, session and blob belongs to one.

API keys (which tenant a request is) are the gateway's business: `services/gateway/keystore.py`.
"""

from __future__ import annotations

OPEN_TENANT = "public"  # the tenant every request belongs to while auth is off
