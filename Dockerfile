# The image every node of cluster.yaml runs: CUDA base, the Python that CI tests, and the project
# with every dependency at the version constraints.txt pins (the versions `make test` installs).
#
#   docker build -t boxsup:0.1.0 .
#   docker run --rm --gpus all boxsup:0.1.0 boxsup --help
#
# Push it where the cluster's nodes can pull it and put that name in cluster.yaml's docker.image.
# torch's wheels bring their own CUDA libraries (cu13): the host needs an NVIDIA driver >= 580
# and the NVIDIA container toolkit (the AWS Deep Learning AMIs have both).
FROM nvidia/cuda:13.0.1-base-ubuntu24.04

# CI's interpreter (tests/test_cluster_config.py checks that they agree); uv installs that exact
# CPython build, pip then installs the packages with the same resolver and pins as `make`.
ARG PYTHON_VERSION=3.11.7
ARG UV_VERSION=0.9.5

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# boto3 (below): the autoscaler on the head talks to EC2 with it.
# rsync, ssh and sudo: what Ray's cluster launcher uses inside a node's container; libgl/glib: OpenCV; build-essential:
# pydensecrf2, which PyPI has as source only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl rsync openssh-client sudo build-essential \
       libglib2.0-0 libgl1 \
    && rm -rf /var/lib/apt/lists/*

RUN curl -LsSf "https://astral.sh/uv/${UV_VERSION}/install.sh" | env UV_INSTALL_DIR=/usr/local/bin sh \
    && uv python install "${PYTHON_VERSION}" \
    && uv venv --seed --python "${PYTHON_VERSION}" /opt/venv \
    && python -c "import sys; assert sys.version.split()[0] == '${PYTHON_VERSION}', sys.version"

WORKDIR /opt/boxsup
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY boxsup ./boxsup
RUN python -m pip install -c constraints.txt ".[serve]" boto3 \
    && python -c "import torch, torchvision, ray, mlflow, cv2, pydensecrf.densecrf, skimage, pycocotools"
COPY configs ./configs
COPY search_spaces ./search_spaces
COPY cluster.yaml ./

CMD ["boxsup", "--help"]
