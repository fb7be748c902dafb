"""The worker side of Trellis: suites, task data resolution, lm-eval runs, and the GPU worker's
own Celery application (`evaluator.worker`). Imports neither Django nor `leaderboard`.

`vocabulary`, `messages`, `config`, `suites` and `artifacts` are light (the web side imports
them; `artifacts` imports boto3 only when a bucket is used); `run`, `data` and `demo_model` pull
in torch, transformers and lm-eval only inside the functions that need them."""
