"""Upload metrics: progress while an upload runs, not only when its request completes.

A 1,000,000-row upload takes seconds; the request counter moves only at its end. The optimizer
(and a dashboard) must see an upload burst while it happens.
"""

from prometheus_client import Counter, Gauge

UPLOADS_IN_PROGRESS = Gauge("uploads_in_progress", "CSV uploads being stored right now")
UPLOAD_ROWS = Counter("upload_rows_total", "Rows of uploaded files stored, as each chunk commits")
