"""The worker side: suites, dataset resolution and lm-eval runs. Imports no Django."""
