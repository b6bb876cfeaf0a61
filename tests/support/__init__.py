"""Shared test machinery: hook receiver, process launchers, API client."""
