# Sourced by the benchmark scripts: bench_model NET prints the ONNX file of a benchmark
# network (demo: the Fashion-MNIST CNN; wong: Wong et al. 2020's small CNN), or says what
# NET may be and returns 2.
bench_model() {
  case "$1" in
    demo) echo models/fmnist_cnn.onnx ;;
    wong) echo models/wong_cnn.onnx ;;
    *) echo "benchmark network must be demo or wong, got '$1'" >&2; return 2 ;;
  esac
}
