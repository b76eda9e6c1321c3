"""Upgrades of what a previous release stored for a target (docs/architecture.md §5): read
both forms for a release, rewrite once (Deployer.upgraded in shared/deployment/reconcile.py).

- Workers once got the orchestrator's REDIS_URL: `holds_store_url` finds such Secrets and
  `without_store_url` drops it (adding the credentials generation; the pods roll once).
- Names once had a 32-bit hash, pods were not secured and had no NetworkPolicy:
  `needs_hardening` finds such records and `hardened` renames and secures them.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Collection, Sequence

from shared.deployment.desired_state import (
    GENERATION_KEY,
    REDIS_URL_KEY,
    STEP_QUEUE_KEY,
    content_hash,
    network_policy_for,
    secure,
    stamp,
)
from shared.deployment.object_names import current_name
from shared.deployment.worker_settings import WorkerSettings
from shared.ports.driver import (
    COMPONENT_ID_ANNOTATION,
    DEPLOYMENT_LABEL,
    SECRET_HASH_ANNOTATION,
    Manifest,
)


def holds_store_url(manifests: Sequence[Manifest]) -> bool:
    """Written by a release that gave workers the orchestrator's REDIS_URL (read for upgrades)."""
    return any(m["kind"] == "Secret" and REDIS_URL_KEY in (m.get("data") or {}) for m in manifests)


def without_store_url(
    manifests: Sequence[Manifest], generation: int | None
) -> tuple[Manifest, ...]:
    """Upgrade of such manifests: the stored REDIS_URL dropped, the credentials generation
    added, and each Deployment's Secret hash annotation recomputed (its pods roll once)."""
    secrets: dict[str, Manifest] = {}
    result: list[Manifest] = []
    for manifest in manifests:
        if manifest["kind"] == "Secret":
            manifest = copy.deepcopy(manifest)
            data = manifest.setdefault("data", {})
            data.pop(REDIS_URL_KEY, None)
            if generation is not None and STEP_QUEUE_KEY in data:
                data[GENERATION_KEY] = base64.b64encode(str(generation).encode()).decode()
            secrets[manifest["metadata"]["name"]] = stamp(manifest)
            manifest = secrets[manifest["metadata"]["name"]]
        result.append(manifest)
    for index, manifest in enumerate(result):
        if manifest["kind"] != "Deployment" or manifest["metadata"]["name"] not in secrets:
            continue
        manifest = copy.deepcopy(manifest)
        data = secrets[manifest["metadata"]["name"]]["data"]
        template = manifest["spec"]["template"]["metadata"]
        template.setdefault("annotations", {})[SECRET_HASH_ANNOTATION] = content_hash(data)[:16]
        result[index] = stamp(manifest)
    return tuple(result)


def needs_hardening(manifests: Sequence[Manifest]) -> bool:
    """Written by a release before this one's hardening (read for upgrades): a name with a
    32-bit hash, a pod not secured, or a Deployment without its NetworkPolicy."""
    policies = {m["metadata"]["name"] for m in manifests if m["kind"] == "NetworkPolicy"}
    for manifest in manifests:
        if current_name(manifest) not in (None, manifest["metadata"]["name"]):
            return True
        if manifest["kind"] == "Deployment":
            pod = manifest["spec"]["template"]["spec"]
            if not (pod.get("securityContext") or {}).get("runAsNonRoot"):
                return True
            if manifest["metadata"]["name"] not in policies:
                return True
    return False


def hardened(
    manifests: Sequence[Manifest],
    worker: WorkerSettings,
    writable_root: Collection[str] = (),
) -> tuple[Manifest, ...]:
    """Upgrade of such manifests: each object under the name this release gives it (the
    Deployment's selector, pod labels and Secret reference following), every pod secured, each
    Deployment with its NetworkPolicy; re-stamped. The objects still running under the old
    names are then extra and removed before the new ones are applied (Deployer.reconcile), so
    a node never runs twice; a second pass finds nothing to change."""
    result: list[Manifest] = []
    for manifest in manifests:
        if manifest["kind"] == "NetworkPolicy":
            continue  # rendered again below, from its Deployment
        manifest = copy.deepcopy(manifest)
        old = manifest["metadata"]["name"]
        new = current_name(manifest) or old
        manifest["metadata"]["name"] = new
        labels = manifest["metadata"].get("labels") or {}
        if DEPLOYMENT_LABEL in labels:
            labels[DEPLOYMENT_LABEL] = new
        if manifest["kind"] == "Deployment":
            spec = manifest["spec"]
            spec["selector"]["matchLabels"][DEPLOYMENT_LABEL] = new
            spec["template"]["metadata"]["labels"][DEPLOYMENT_LABEL] = new
            for container in spec["template"]["spec"]["containers"]:
                for source in container.get("envFrom") or []:
                    if (source.get("secretRef") or {}).get("name") == old:
                        source["secretRef"]["name"] = new
            component = manifest["metadata"]["annotations"].get(COMPONENT_ID_ANNOTATION)
            secure(manifest, writable_root=component in writable_root)
            result.append(stamp(network_policy_for(manifest, worker.egress())))
        result.append(stamp(manifest))
    return tuple(result)
