"""The operator's dashboard (/dashboard) and the attachment timeline it shares with the API."""
