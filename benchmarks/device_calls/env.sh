# Sourced by the call scripts on the GPU host (nvidia-h100-x4), from the project root copy (.gpu/tree).
export PYTHONPATH=/tmp/gpu/site:$PWD UNSLOTH_DISABLE_STATISTICS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 DAGSTER_DISABLE_TELEMETRY=1 WANDB_MODE=disabled
# NVLink multicast stays off (KINDS.md): a program that uses it can take the host's shared GPUs out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=/tmp/gpu/data
R=/tmp/gpu/results
mkdir -p "$R"
