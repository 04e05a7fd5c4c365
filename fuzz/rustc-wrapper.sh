#!/bin/sh
# Cargo runs this as `rustc-wrapper.sh RUSTC ARGS...` (RUSTC_WRAPPER). It adds libFuzzer's
# coverage instrumentation (the flags cargo-fuzz uses, without a sanitizer) to the keyformer
# library alone; everything else, its build script included, compiles as in a plain build.
rustc=$1
shift
case " $* " in
*" --crate-name keyformer "*)
    exec "$rustc" "$@" \
        -Cpasses=sancov-module \
        -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
        -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares \
        --cfg fuzzing
    ;;
esac
exec "$rustc" "$@"
