"""Code every voicequeue service shares: config, job records, events, blobs, queues, metrics."""
