"""The runner image: built air-gapped from Dockerfile.runner and runner_image/ (shipped in the
wheel under `image/runner/`), tagged by a hash of its inputs.

May import: `domain/`.
"""
