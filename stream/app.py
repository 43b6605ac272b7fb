"""The worker's entry module for Faust's own command line: `faust -A stream.app worker`.

Importing it builds the app from the environment (`stream.settings.WorkerSettings`); nothing else imports
it, so no library module builds an app as a side effect. `nextclick worker` builds its own
(`stream.worker.pipeline.create_app`).
"""

from stream.worker.pipeline import create_app

app = create_app()
