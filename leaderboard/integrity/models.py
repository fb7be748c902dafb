"""Integrity: reports and flags on models and datasets, and the moderation audit log.
(Owned by the integrity issue; the derived status lives on catalog.Repository.)"""
