"""The result cache's key: equal for runs that must give the same outcome.

It covers the code, the language, the config, the identity of the data the run reads (see
`catalog.data_identity`), the runner image and the tenant (a tenant never sees another's
cached run, nor learns that it exists).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import RunRequest


def cache_key(request: RunRequest, data_identity: str, image_tag: str) -> str:
    material = {
        "code": request.code_sha256,
        "language": request.language,
        "config": request.config.canonical_json(),
        "data": data_identity,
        "image": image_tag,
        "tenant": request.tenant,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
