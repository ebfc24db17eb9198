"""The engine phase: the serving image's own vLLM started with dummy weights, so that every
cache vLLM and its libraries write at start-up lands on the cache volume (command.py is
pure; process.py runs the server; phase.py is the phase the runner calls)."""
