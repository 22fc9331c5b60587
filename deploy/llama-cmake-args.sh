#!/bin/sh
# CMAKE_ARGS for building llama-cpp-python on this machine's CPU.
# Not GGML_NATIVE: these VMs advertise AMX but trap its instructions (SIGILL on the first
# request), so we enable what /proc/cpuinfo lists and leave AMX off.
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has() { case " $flags " in *" $1 "*) echo ON ;; *) echo OFF ;; esac; }
echo "-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
  "-DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)" \
  "-DGGML_BMI2=$(has bmi2) -DGGML_AVX_VNNI=$(has avx_vnni) -DGGML_AVX512=$(has avx512f)" \
  "-DGGML_AVX512_VNNI=$(has avx512_vnni)"
