# The worker image of `noisy-student --runner=DataflowRunner` (and of Flink / Spark's
# portable workers): Beam's Python 3.11 SDK harness, TensorFlow 2.21 with its CUDA
# libraries, and this package with its beam extra. From the repository's root:
#
#   docker build -f docker/beam.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/noisy-student-beam:0.1 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/noisy-student-beam:0.1
#
# Then pass --sdk_container_image=<that tag> --sdk_location=container to the job
# (docs/usage.md, "Pseudo-labelling at scale"). The Python and Beam versions must be the
# ones of the machine that launches the job (Beam refuses a mismatch).
FROM python:3.11-slim

# The SDK harness's launcher, from Beam's own image of the same version.
COPY --from=apache/beam_python3.11_sdk:2.77.0 /opt/apache/beam /opt/apache/beam

WORKDIR /opt/noisy-student
COPY setup.py README.md ./
COPY efficientnet efficientnet
COPY flags flags
COPY noisy_student noisy_student
COPY tfrecords tfrecords
# tensorflow[and-cuda] brings the CUDA and cuDNN wheels; the NVIDIA driver comes from
# the worker VM (Dataflow: worker_accelerator=...;install-nvidia-driver).
RUN pip install --no-cache-dir "tensorflow[and-cuda]==2.21.0" ".[beam]"

# Several SDK processes may share one GPU: each takes memory as it needs it, not all.
ENV TF_FORCE_GPU_ALLOW_GROWTH=true TF_CPP_MIN_LOG_LEVEL=1

ENTRYPOINT ["/opt/apache/beam/boot"]
