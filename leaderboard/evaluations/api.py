"""API routes of this app (mounted under /api/v1/ by leaderboard.api)."""

from ninja import Router

router = Router()
