"""The lab's demo (lab/demo/*.yaml) made runnable on a real cluster, printed as YAML.

In the netns lab an image such as `weft/http-echo` names a sample app that the lab runs
from this checkout (lab/images.py); on k3s there is no such image to pull. Each container
whose image is a known sample app gets weft's image instead (it holds the sample apps), the
app's module as its command when it has none, and imagePullPolicy IfNotPresent (the image
is imported into every node, never pulled). Everything else, the namespace's enrollment
label included, is applied as written.

    python3 scripts/vagrant/demo_manifests.py --image ghcr.io/weft-mesh/weft:0.1.0 lab/demo \
        | kubectl apply -f -
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from lab.images import SAMPLE_APPS, image_name
from weftctl.render import containers


def rewrite(doc: dict[str, Any], image: str) -> dict[str, Any]:
    for _, container in containers(doc):
        app = image_name(str(container.get("image", "")))
        module = SAMPLE_APPS.get(app)
        if module is None:
            continue
        container["image"] = image
        container["imagePullPolicy"] = "IfNotPresent"
        if not container.get("command"):
            container["command"] = ["python3", "-m", module]
    return doc


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="weft's image, as imported on the nodes")
    parser.add_argument("folder", type=Path, help="the demo manifests (lab/demo)")
    args = parser.parse_args(argv)
    docs: list[dict[str, Any]] = []
    for path in sorted(args.folder.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                print(f"{path}#{i}: not a mapping", file=sys.stderr)
                return 1
            docs.append(rewrite(doc, args.image))
    if not docs:
        print(f"{args.folder}: no manifests", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
