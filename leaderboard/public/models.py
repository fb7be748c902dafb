"""The public views own no data: they read the catalog, submissions, runs and flags."""
