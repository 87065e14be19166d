# The raymedia cluster image: Ray's own GPU image plus torch with CUDA, this package and
# every dependency, so `ray up cluster.yaml` and the KubeRay RayJob run the jobs as they are.
#
#   docker build -t raymedia:0.1.0 .                  # IMAGE in the Makefile; push it, then set
#   docker tag raymedia:0.1.0 REGISTRY/raymedia:0.1.0 # docker.image (cluster.yaml) and image
#   docker push REGISTRY/raymedia:0.1.0               # (deploy/kuberay/rayjob.yaml) to that name
#
# rayproject/ray:<ver>-py311-gpu is Ubuntu + CUDA 12 + Python 3.11 (/home/ray/anaconda3) with
# `ray[all]` installed (ray-project/ray docker/ray/Dockerfile); it has no torch (the ray-ml
# images that had it are no longer published). torch's cu12x wheels carry their own CUDA
# runtime and need only a CUDA 12 driver on the node. The version matches pyproject.toml.
# tests/system/test_image.py runs these RUN pip lines in a venv that holds only ray[all] and then runs
# jobs/nightly.py with it: a dependency missing here fails that test.
FROM rayproject/ray:2.60.0-py311-gpu

ARG TORCH_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cu128"

RUN pip install --no-cache-dir ${TORCH_PIP_ARGS} "torch==2.13.0"

WORKDIR /home/ray/raymedia
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users raymedia ./raymedia
RUN pip install --no-cache-dir .
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users configs ./configs
