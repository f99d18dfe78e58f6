#!/usr/bin/env bash
# The device check, for a lent CUDA machine (one run, about 6 minutes): the CUDA test suite (tests/gpu), then
# benchmarks/train_step.py on a full-size random SDXL (fp16 file; the fp32 and bf16 workloads). Figures go into
# benchmarks/README.md by hand.
#
#   here:   bash scripts/gpu_wheels.sh
#   there:  bash scripts/gpu_check.sh          (device tool: carry [".gpu_wheels"], timeout_s 480)
#
# Results in $OUT (or output/gpu_check): nvidia-smi.txt, pip.txt, tests_gpu.txt, bench_fp32.txt, bench_bf16.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-output/gpu_check}"
py="${PYTHON:-python3}"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/nvidia-smi.txt"
if [ -d .gpu_wheels ]; then
  "$py" -m pip install -q --no-index --no-deps .gpu_wheels/*.whl > "$out/pip.txt" 2>&1 || tail -n 5 "$out/pip.txt"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
timeout 240 "$py" -m pytest -q -p no:cacheprovider -rs tests/gpu > "$out/tests_gpu.txt" 2>&1
echo "tests/gpu exit $?"; tail -n 25 "$out/tests_gpu.txt"
full=/tmp/sd_train_full_sdxl
timeout 150 "$py" benchmarks/train_step.py --make-full-sdxl "$full" > "$out/bench_fp32.txt" 2>&1
echo "bench fp32 exit $?"; grep '^|' "$out/bench_fp32.txt"
model="$full/sdxl_random_fp16.safetensors"
timeout 90 "$py" benchmarks/train_step.py -- --pretrained_model_name_or_path "$model" \
  --dataset_config "$full/data/sample_dataset.toml" --output_dir "$full/out_bf16" --network_module networks.lora \
  --network_dim 4 --network_train_unet_only --cache_latents --cache_text_encoder_outputs \
  --mixed_precision bf16 --resolution 64 --max_train_steps 3 --max_data_loader_n_workers 0 --seed 0 \
  > "$out/bench_bf16.txt" 2>&1
echo "bench bf16 exit $?"; grep '^|' "$out/bench_bf16.txt"
