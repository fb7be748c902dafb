"""Gunicorn settings for the Trellis web process (deploy/systemd/trellis-web.service and the
`web` service of deploy/compose.yaml). Every value can be overridden with GUNICORN_* variables."""

import multiprocessing
import os
import shutil
import tempfile

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Pages and the API are short database reads; evaluations never run in this process.
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2 + 1))
threads = int(os.environ.get("GUNICORN_THREADS", "2"))
worker_class = "gthread"
# Load the application once in the master and fork the workers from it (leaderboard/wsgi.py
# imports every view): a worker starts, and restarts after max_requests, without importing the
# project again (1.5 s of CPU each on a busy 2-core host, paid by whoever asked first).
preload_app = True
# Artifact downloads stream from disk (sendfile); nothing else takes long.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
# No keep-alive: a gthread worker accepts every connection it can, and a kept-alive connection
# stays with the worker that accepted it, so a client (or nginx's upstream pool) holding a few
# connections sent most requests to one worker while the others idled. Measured with
# bench/load.py (50 readers on kept-alive connections): one worker at 75-81% of a core, the
# others at 5-10%, ranking p95 0.8-0.9 s; closed after each response, the five shared the load
# and ranking p95 was 100-130 ms. A connection on loopback or the compose network costs little.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "0"))
# Recycle workers now and then so a slow leak never becomes an outage.
max_requests = 2000
max_requests_jitter = 200
# nginx on the same host (or the compose network) sets X-Forwarded-*.
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
wsgi_app = "leaderboard.wsgi:application"

# /metrics sums the request counters of every worker process (prometheus_client's multiprocess
# mode): each process writes its samples under this folder, fresh at every start.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="trellis-metrics-"))


def on_starting(server):
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
