#!/usr/bin/env python3
"""Writes an OCI image archive of Debian's static busybox: the runc baseline for the benchmarks.

usage: busybox-image.py BUSYBOX_BINARY REFERENCE OUTPUT.tar

The registries holding busybox images are out of reach here, so the baseline image is made
from the distribution's binary: one layer with /bin/busybox and /bin/echo, /bin/sh links to it.
"""
import hashlib
import io
import json
import sys
import tarfile


def blob(data):
    return {"digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data), "bytes": data}


def add(tar, name, data=None, link=None, mode=0o755):
    info = tarfile.TarInfo(name)
    info.mode = mode
    if link:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def main(busybox, reference, output):
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = tarfile.TarInfo("bin")
        dirs.type, dirs.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(dirs)
        add(tar, "bin/busybox", open(busybox, "rb").read())
        for applet in ("echo", "sh", "sleep"):
            add(tar, f"bin/{applet}", link="busybox")
    layer = blob(layer_buf.getvalue())
    config = blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/echo", "Hello from busybox"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
    }).encode())
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config["digest"], "size": config["size"]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer["digest"], "size": layer["size"]}],
    }).encode())
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest["digest"], "size": manifest["size"],
            "platform": {"os": "linux", "architecture": "amd64"},
            "annotations": {"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": reference.rsplit(":", 1)[-1]},
        }],
    }).encode()
    with tarfile.open(output, "w") as tar:
        add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', mode=0o644)
        add(tar, "index.json", index, mode=0o644)
        for b in (layer, config, manifest):
            add(tar, "blobs/sha256/" + b["digest"].split(":")[1], b["bytes"], mode=0o644)


if __name__ == "__main__":
    main(*sys.argv[1:])
