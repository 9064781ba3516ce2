#!/usr/bin/env bash
# The checks that need a GPU, in one short run (about 5 minutes on one H100/H200):
#   1. the exactness tests on this machine's PyTorch (models run on the GPU);
#   2. UNet speed, SDPA vs the legacy einsum attention, at the seed's DDPM-SR config, fp32 and fp16;
#   3. DDPM-SR sampling at the seed's config, batch 10 at 256 px: ours (fp16 weights, then bf16
#      autocast) vs einsum/fp32, with peak memory;
#   4. mean-model training at the seed's config: ours (fp16) vs a reference-style loop;
#   5. end to end on the GPU: ddpm_sr_sample.py with --use_fp16 True on a randomly initialised
#      checkpoint of the seed's upsampler config, and sr_mean_train.py with fp16 loss scaling.
# Results go to $OUT (or outputs/gpu_checks).
#   bash benchmarks/gpu_checks.sh          # all
#   bash benchmarks/gpu_checks.sh 3 5      # some sections
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_checks}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
work=$(mktemp -d)
sections=${*:-1 2 3 4 5}
want() { [[ " $sections " == *" $1 "* ]]; }
step() { echo; echo "=== $1"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

want 1 && step "1. exactness tests" &&
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_guided_diffusion_exact.py 2>&1 | tail -3

want 2 && step "2. UNet speed, seed DDPM-SR config, batch 4" &&
for dtype in fp32 fp16; do
  timeout 90 $PY benchmarks/unet_speed.py --preset seed_sr --batch_size 4 --dtype $dtype --iters 5 \
    --json "$OUT/unet_seed_sr_$dtype.json" 2>&1 | tail -6
done

want 3 && step "3. sampling speed, seed config, batch 10, 256 px, 10 respaced steps" &&
for run in fp16,False bf16,False fp16,True; do
  dtype=${run%,*} compile=${run#*,}
  timeout 200 $PY benchmarks/sr_sample_speed.py --preset seed --batch_size 10 --timestep_respacing 10 \
    --dtype $dtype --compile $compile --json "$OUT/sample_seed_${dtype}_compile_$compile.json" 2>&1 | tail -5
done

want 4 && step "4. mean-model training speed, seed config (batch 8), ours fp16 vs reference-style fp32" &&
timeout 150 $PY benchmarks/sr_train_speed.py --preset seed --use_fp16 True --steps 15 --num_images 64 \
  --json "$OUT/train_seed.json" 2>&1 | tail -4

want 5 && step "5. end to end on the GPU: fp16 sampling (eager and compiled) and fp16 training, seed configs" &&
(
  set -e
  cd "$work"
  $PY -c "from tests.helpers import make_image_folder; make_image_folder('imagenet/train', 2, 3)"
  $PY "$OLDPWD/scripts/build_data_info.py" --data_dir imagenet/train --out_dir data/sr_imagenet --num_per_class 1
  $PY - <<'EOF'
import os, torch as th
from guided_diffusion.script_util import sr_create_model_and_diffusion, sr_model_and_diffusion_defaults
flags = sr_model_and_diffusion_defaults()
flags.update(large_size=256, small_size=64, num_channels=192, num_res_blocks=2, attention_resolutions="32,16,8",
             class_cond=True, learn_sigma=True, resblock_updown=True, num_heads=4)
model, _ = sr_create_model_and_diffusion(**flags)
for p in model.parameters():  # a trained-looking network: no zero-initialised output layers
    p.data.normal_(0, 0.01)
os.makedirs("checkpoints/ddpm_sr", exist_ok=True)
th.save(model.state_dict(), "checkpoints/ddpm_sr/64_256_upsampler.pt")
EOF
  MODEL_FLAGS="--attention_resolutions 32,16,8 --class_cond True --large_size 256 --small_size 64 \
--num_channels 192 --num_heads 4 --num_res_blocks 2 --learn_sigma True --resblock_updown True \
--use_fp16 True --use_scale_shift_norm True"
  GD_FLAGS="--diffusion_steps 1000 --noise_schedule linear --learn_sigma True --timestep_respacing 25"
  SCRIPT_FLAGS="--log_dir logs/ddpm_sr --output_dir outputs/ddpm_sr --data_dir imagenet/train \
--model_path checkpoints/ddpm_sr/64_256_upsampler.pt --to_sample_images_dict_path data/sr_imagenet/to_sample_data_info.pkl \
--num_samples_per_image 10 --batch_size 10"
  SECONDS=0
  timeout 120 $PY "$OLDPWD/ddpm_sr_sample.py" $MODEL_FLAGS $GD_FLAGS $SCRIPT_FLAGS > sample.log 2>&1
  echo "ddpm_sr_sample.py fp16: 2 images x 10 samples x 25 steps in ${SECONDS} s (model load included)"
  SECONDS=0
  timeout 200 $PY "$OLDPWD/ddpm_sr_sample.py" $MODEL_FLAGS $GD_FLAGS $SCRIPT_FLAGS --compile True \
    --output_dir outputs/ddpm_sr_compiled --log_dir logs/ddpm_sr_compiled > sample_compiled.log 2>&1
  echo "the same with --compile True: ${SECONDS} s (compiling included)"
  $PY -c "
import numpy as np, glob; from PIL import Image
def load(d): return np.stack([np.array(Image.open(p)) for p in sorted(glob.glob(d + '/*/high_res_samples/*.png'))])
a, b = load('outputs/ddpm_sr'), load('outputs/ddpm_sr_compiled')
print('samples', a.shape, a.dtype, 'mean', a.mean().round(2), 'std over samples', a.astype(float).std(0).mean().round(2))
d = np.abs(a.astype(int) - b.astype(int))
print('compiled vs eager: share of equal pixels', (d == 0).mean().round(6), 'max |diff|', d.max())"
  MODEL_FLAGS="--attention_resolutions 16 --large_size 256 --small_size 64 --model_channels 128 --num_heads 4 \
--num_res_blocks 2 --resblock_updown True --use_fp16 True --channel_mult 1,1,2,2,4"
  timeout 150 $PY "$OLDPWD/sr_mean_train.py" $MODEL_FLAGS --data_dir imagenet/train \
    --data_info_dict_path data/sr_imagenet/train_data_info.pkl --batch_size 4 --microbatch 2 --log_dir logs/sr_mean \
    --log_interval 5 --save_interval 30 --max_step 30 --model_save_dir checkpoints/sr_mean --debug_mode yes \
    --num_workers 0 > train.log 2>&1
  $PY -c "
import csv; rows = list(csv.DictReader(open('logs/sr_mean/progress.csv')))
print('sr_mean_train fp16, last row:', {k: rows[-1][k] for k in rows[-1] if k in ('step', 'loss', 'lg_loss_scale', 'grad_norm', 'max_memory_gib')})"
  ls checkpoints/sr_mean
) 2>&1 | tail -20
cp "$work"/*.log "$OUT"/ 2>/dev/null
echo; echo "done"
