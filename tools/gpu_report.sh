#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, on a machine with CUDA (and CuPy for the cupy rows).
#
#   tools/gpu_report.sh OUTDIR [PART ...]     PART: tests lif cupy reference torch extras coupling compile memory
#                                             (default: all)
#
# tests   the GPU tests (CuPy kernel vs torch backend, a training step on the GPU) -> pytest.txt
# lif     one LIF neuron's forward/backward and kernel bandwidth, fp32 and fp16  -> lif.jsonl
# cupy    MSViT, QKFormer and a model per baseline family at the recipe's per-GPU batch, CuPy LIF, AMP and fp32
#         -> bench_cupy*.json
# reference  four models with --reference (spikingjelly's kernel, unfused convs), AMP -> bench_reference.json
# torch   the same with the torch LIF backend                                   -> bench_torch*.json
# extras  channels_last, torch.compile and a profiled step of msvit_cifar_4_384  -> extras.txt
# coupling  batch-coupled vs per-sample SSA, alternating in one process, CuPy LIF, AMP, recipe batches
#         -> bench_coupling_amp.json; one LIF on a coupled SSA's [T*B, C, N] and the same numbers
#         of elements per sample [T, B, C, N], fp16 and fp32 -> lif_coupling.jsonl
# compile  reference, optimised eager and compiled steps in turn, AMP, recipe batches, without and with CUDA
#         graphs (--compile-mode reduce-overhead), MSViT CIFAR and ImageNet-384 (the DVS model, T 16, took
#         18 minutes to compile on 2 CPU cores) -> bench_compile*.json
# memory  msvit_10_768 at the recipe's per-GPU batch, AMP, with and without activation checkpointing
#         -> bench_memory.jsonl; the stem's first layer once per image vs per step, and spikes saved for backward
#         as bits vs dense, each switched on and off in one process, AMP -> switch_ab.jsonl
# Each part runs even if an earlier one failed; the exit status is that of the last failure.
set -u -o pipefail
out=${1:?usage: tools/gpu_report.sh OUTDIR [tests lif cupy reference torch extras coupling]}
shift
parts=${*:-tests lif cupy reference torch extras coupling compile memory}
py=${PYTHON:-python3}
mkdir -p "$out"
status=0
step() { "$@" || status=$?; }
# MSViT and QKFormer, and one model of each baseline family (all 27 registered models would not fit the device time)
models=$($py -c "import msvit; print(','.join(msvit.MODEL_NAMES))"),spikformer_cifar_4_384,spikingformer_8_768,sdt_8_512
table() { $py -c "import json, sys, msvit.bench as b; print(b.format_table(json.load(open(sys.argv[1]))['results']))" "$1"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv > "$out/gpu.txt" 2>&1
$py -c "import torch, timm, spikingjelly, cupy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'timm', timm.__version__, 'cupy', cupy.__version__)" >> "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

for part in $parts; do
  echo "== $part $(date -u +%H:%M:%S)"
  case $part in
    tests)
      $py -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/pytest.txt" || status=$? ;;
    lif)
      for dtype in float32 float16; do
        for variant in "cupy" "cupy --reference" "torch"; do
          step $py -m msvit.bench --lif --device cuda --backend $variant --lif-dtype $dtype --json >> "$out/lif.jsonl"
          $py -c "import json, sys, msvit.bench as b; print(b.format_lif(json.loads(sys.argv[1])))" \
            "$(tail -n 1 "$out/lif.jsonl")"
        done
      done ;;
    reference)
      step $py -m msvit.bench --all --models msvit_cifar_4_384,qkformer_cifar_4_384,msvit_10_384,msvit_dvs_2_256 \
        --device cuda --backend cupy --amp --reference --json > "$out/bench_reference.json"
      table "$out/bench_reference.json" ;;
    cupy | torch)
      for amp in --amp ""; do
        step $py -m msvit.bench --all --models "$models" --device cuda --backend "$part" $amp --json \
          > "$out/bench_$part${amp:+_amp}.json"
        table "$out/bench_$part${amp:+_amp}.json"
      done ;;
    extras)
      for flags in "" "--channels-last" "--compile"; do
        for backend in cupy torch; do
          $py -m msvit.bench --model msvit_cifar_4_384 --device cuda --backend $backend --amp $flags 2>&1 \
            | tee -a "$out/extras.txt" || status=$?
        done
      done
      $py -m msvit.bench --model msvit_cifar_4_384 --device cuda --backend cupy --amp --profile 30 2>&1 \
        | tee -a "$out/extras.txt" || status=$? ;;
    coupling)
      step $py -m msvit.bench --all --models msvit_cifar_4_384,qkformer_cifar_4_384,msvit_10_384,msvit_dvs_2_256 \
        --device cuda --backend cupy --amp --alternate-ssa --json > "$out/bench_coupling_amp.json"
      table "$out/bench_coupling_amp.json"
      # the SSA output neuron of msvit_cifar_4_384 at batch 64 (C 384, N 8x8) and of msvit_10_384 at 32 (N 14x14)
      for shape in 256x384x64 4x64x384x64 128x384x196 4x32x384x196; do
        for dtype in float16 float32; do
          step $py -m msvit.bench --lif --device cuda --backend cupy --lif-shape $shape --lif-dtype $dtype \
            --json >> "$out/lif_coupling.jsonl"
          $py -c "import json, sys, msvit.bench as b; print(b.format_lif(json.loads(sys.argv[1])))" \
            "$(tail -n 1 "$out/lif_coupling.jsonl")"
        done
      done ;;
    compile)
      for mode in default reduce-overhead; do
        step $py -m msvit.bench --all --models msvit_cifar_4_384,msvit_10_384 --device cuda \
          --backend cupy --amp --compile --compile-mode $mode --alternate --json > "$out/bench_compile_$mode.json"
        table "$out/bench_compile_$mode.json"
      done ;;
    memory)
      for gc in "" --grad-checkpointing; do
        step $py -m msvit.bench --model msvit_10_768 --device cuda --backend cupy --amp $gc --warmup 1 --repeats 3 \
          --json >> "$out/bench_memory.jsonl"
        $py -c "import json, sys, msvit.bench as b; print(b.format_table([json.loads(sys.argv[1])]))" \
          "$(tail -n 1 "$out/bench_memory.jsonl")"
      done
      for switch in stem-once packed-spikes; do
        for model in msvit_cifar_4_384 msvit_10_384; do
          step $py tools/switch_ab.py --switch $switch --model $model --device cuda --amp | tee -a "$out/switch_ab.jsonl"
        done
      done ;;
    *)
      echo "unknown part $part; choose tests lif cupy reference torch extras coupling compile memory" >&2
      status=2 ;;
  esac
done
exit $status
