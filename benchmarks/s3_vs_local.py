"""Assets/s written to a loopback S3 server vs a local directory, same job, same run.

Starts moto's standalone S3 server on a free loopback port, runs the same catalog (synthetic
512² images, PNG, no model) once into a local directory and once into a bucket, and prints
both rates and their ratio.

    python benchmarks/s3_vs_local.py [--rows 400] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import catalog, job, start_ray, workdir  # noqa: E402
from tests.support.s3_server import credentials_env, start_s3_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    directory = workdir("s3")
    manifest = catalog(directory, args.rows)
    stages = [{"kind": "generate", "model": "synthetic",
               "params": {"width": args.size, "height": args.size},
               "resources": {"num_cpus": 0.5, "batch_size": 8}}]
    with start_s3_server() as server:
        os.environ.update({k: v for k, v in credentials_env(server.endpoint_url).items()
                           if k.startswith("AWS_")})
        server.client().create_bucket(Bucket="bench")
        local_job = job(directory, manifest, stages)
        s3_job = job(directory, manifest, stages,
                     output={"uri": "s3://bench/out"},
                     storage={"endpoint_url": server.endpoint_url, "addressing_style": "path"})
        start_ray(local_job)
        from factory.run.pipeline import run_job

        local = run_job(local_job)
        remote = run_job(s3_job)
    assert local.counts.assets == remote.counts.assets == args.rows
    print(f"S3 vs local, {args.rows} assets of {args.size}x{args.size} PNG, one local Ray")
    print(f"  local directory: {local.assets_per_s:8.2f} assets/s (wall {local.wall_s:.1f} s)")
    print(f"  loopback S3:     {remote.assets_per_s:8.2f} assets/s (wall {remote.wall_s:.1f} s)")
    print(f"  S3 / local:      {remote.assets_per_s / local.assets_per_s:8.2f}")


if __name__ == "__main__":
    main()
