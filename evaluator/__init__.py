"""The worker side of Trellis: suites, task data resolution and lm-eval runs. Imports no Django.

`jobs` and `suites` are light (the web side imports them); `run`, `data` and `demo_model` pull in
torch, transformers and lm-eval only inside the functions that need them."""
