#!/usr/bin/env python3
"""Helpers for xtask deploy_checks (runs with the PyYAML of target/venv).

  render.py build DIR   render a kustomization WITHOUT kustomize: only `resources`
                        (files, or directories with their own kustomization) and
                        `images` are understood, which is all deploy/ and
                        deploy/cleanup/ use. Anything else is an error, so that a new
                        kustomize feature in the base is noticed, not silently dropped.
                        Used only when neither `kustomize` nor `kubectl` is installed.
  render.py to-json FILE  the YAML documents of FILE as one JSON list (stdout).
"""
import json
import os
import sys

import yaml

KNOWN = {"apiVersion", "kind", "resources", "images"}


def split_image(image):
    """'reg:5000/a/b:tag' -> ('reg:5000/a/b', ':tag'); digests are kept whole."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
        return name, ":" + tag
    return image, ""


def set_images(obj, images):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "image" and isinstance(value, str):
                name, suffix = split_image(value)
                for rule in images:
                    if rule["name"] == name:
                        new = rule.get("newName", name)
                        if "digest" in rule:
                            suffix = "@" + rule["digest"]
                        elif "newTag" in rule:
                            suffix = ":" + str(rule["newTag"])
                        obj[key] = new + suffix
            else:
                set_images(value, images)
    elif isinstance(obj, list):
        for item in obj:
            set_images(item, images)


def build(directory):
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    unknown = set(kustomization) - KNOWN
    if unknown:
        raise SystemExit(
            f"render.py: {directory}/kustomization.yaml uses {sorted(unknown)}; "
            "this fallback renderer knows only resources and images: install kustomize"
        )
    docs = []
    for resource in kustomization.get("resources", []):
        path = os.path.join(directory, resource)
        if os.path.isdir(path):
            docs.extend(build(path))
        else:
            with open(path) as f:
                docs.extend(d for d in yaml.safe_load_all(f) if d)
    images = kustomization.get("images", [])
    for doc in docs:
        set_images(doc, images)
    return docs


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "to-json"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "build":
        yaml.safe_dump_all(build(sys.argv[2]), sys.stdout, sort_keys=False)
    else:
        with open(sys.argv[2]) as f:
            json.dump([d for d in yaml.safe_load_all(f) if d], sys.stdout)


if __name__ == "__main__":
    main()
