"""The `voicequeue` command line. It sits above the services it starts: nothing in shared/ or services/ imports it."""
