"""Trio actors that own the engine state and process ingested updates."""
