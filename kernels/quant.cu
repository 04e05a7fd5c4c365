// Weights kept in ggml's block formats (src/model/quant.rs): matrix-vector products that read the
// blocks directly (dequantized in registers, accumulated in f32), dequantization into the storage
// type for the prompt's cuBLAS products, and embedding rows.
//
// A format is one struct and one QUANT_KERNELS line. Each block is cut into SHARES lane shares
// (one 16- or 32-byte slice of its quants, with the scales they need); a share's values are RUNS
// runs of RUN consecutive columns, run r starting at column col(s, r) of the block. load() reads a
// share's bytes, decode() turns them into its values run by run, with the reference
// dequantizer's scales (src/model/quant/{blocks32,kquants}.rs describes each layout).

typedef unsigned char u8;

// The device primitives: everything else up to the kernels also compiles as host C++, where a
// test (tests/cuda_decode_host.rs, with QUANT_HOST defined) supplies its own primitives and checks
// every format's load and decode against the CPU's dequantizers without a GPU.
#ifndef QUANT_HOST
// Weight loads through the read-only path; no kernel writes weights, so the compiler may hoist
// them. Each helper needs the alignment its name says.
__device__ __forceinline__ u32 ld8(const u8* p) {
    unsigned short v;
    asm("ld.global.nc.u8 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ u32 ld16(const u8* p) {
    unsigned short v;
    asm("ld.global.nc.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ u32 ld32(const u8* p) {
    u32 v;
    asm("ld.global.nc.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ uint2 ld64(const u8* p) {
    uint2 v;
    asm("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}
__device__ __forceinline__ uint4 ld128(const u8* p) {
    uint4 v;
    asm("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
// The low word of hi:lo shifted right by min(sh, 32).
__device__ __forceinline__ u32 funnel_right(u32 lo, u32 hi, u32 sh) {
    u32 r;
    asm("shf.r.clamp.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(lo), "r"(hi), "r"(sh));
    return r;
}
__device__ __forceinline__ float half_bits(u32 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)(h & 0xffff)));
    return f;
}
#endif

// Bytes from a 2-aligned address p as whole words, for blocks whose size is only even: N + 1
// aligned 4-byte loads from p rounded down, then at(a) is the word at p + a (a even, at most
// 4N - 2) by a funnel shift. One load in two fewer than 2-byte loads, so a warp's requests
// cover each cache line fewer times. Reads up to 4 bytes past p + 4N: the backend pads the end
// of every weight's allocation.
template <int N>
struct Words {
    u32 w[N + 1], sh;
    __device__ __forceinline__ void load(const u8* p) {
        sh = 8 * (u32)((size_t)p & 3);
        const u8* base = p - ((size_t)p & 3);
#pragma unroll
        for (int k = 0; k <= N; k++) w[k] = ld32(base + 4 * k);
    }
    __device__ __forceinline__ u32 at(int a) const { return funnel_right(w[a / 4], w[a / 4 + 1], sh + 8 * (a % 4)); }
};

// Byte j of w.
__device__ __forceinline__ u32 byte_of(u32 w, u32 j) { return (w >> (8 * j)) & 0xff; }

// Byte k of the bytes held by words a, b, c (k < 12), for scale tables indexed at run time.
__device__ __forceinline__ u32 byte_of3(u32 a, u32 b, u32 c, u32 k) {
    return byte_of(k < 4 ? a : (k < 8 ? b : c), k & 3);
}


// q - offset for a small unsigned q, exactly, without an integer conversion: the float 2^23 + q
// has q in its low mantissa bits.
__device__ __forceinline__ float qf(u32 q, float offset) {
    return __uint_as_float(0x4B000000u | q) - (8388608.0f + offset);
}

// The IQ4 codebook (kvalues_iq4nl) plus 128, four values a word: entry q of the 16.
__device__ __forceinline__ float iq4_value(u32 q) {
    u32 lo = __byte_perm(0x3f2d1801u, 0x766a5d4fu, q & 7);
    u32 hi = __byte_perm(0xa6998d81u, 0xf1d9c5b5u, q & 7);
    return qf(((q & 8) ? hi : lo) & 0xff, 128.0f);
}

// 1 + q / 2^bits for the `bits`-bit field q at bit `at` of w, exactly: q lands in the top of the
// mantissa of 1.0. A value a * q + b is then fmaf(a * 2^bits, unit(...), b - a * 2^bits): one
// shift, one logic op and one FMA a value, where qf() needs an add more.
// w with bit `from` moved to bit `to` (a shift either way; both known after unrolling).
__device__ __forceinline__ u32 move_bits(u32 w, int from, int to) { return from <= to ? w << (to - from) : w >> (from - to); }

template <int bits>
__device__ __forceinline__ float unit(u32 w, int at) {
    const int top = 23 - bits;
    u32 m = at <= top ? w << (top - at) : w >> (at - top);
    return __uint_as_float((m & (((1u << bits) - 1) << top)) | 0x3F800000u);
}

// Sixteen 4-bit values from four words as nibbles16 does, value a * q + b with (a, b) = (a_lo,
// b_lo) for the low nibbles and (a_hi, b_hi) for the high ones.
__device__ __forceinline__ void nibbles16_affine(const u32 (&q)[4], float* v, float a_lo, float b_lo, float a_hi,
                                                 float b_hi) {
    float al = 16.0f * a_lo, bl = b_lo - al, ah = 16.0f * a_hi, bh = b_hi - ah;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        v[i] = fmaf(al, unit<4>(q[i / 4], 8 * (i % 4)), bl);
        v[16 + i] = fmaf(ah, unit<4>(q[i / 4], 8 * (i % 4) + 4), bh);
    }
}

// Sixteen 5-bit values: the nibbles as nibbles16_affine's, the fifth bit of value i at bit 22 of
// fifth(i) (other bits of it ignored); value a * q + b as there, with q in 1.0's top five bits.
template <class Fifth>
__device__ __forceinline__ void fives16_affine(const u32 (&q)[4], float* v, float a_lo, float b_lo, float a_hi,
                                               float b_hi, Fifth fifth) {
    float al = 32.0f * a_lo, bl = b_lo - al, ah = 32.0f * a_hi, bh = b_hi - ah;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        u32 lo = (move_bits(q[i / 4], 8 * (i % 4), 18) & 0x3C0000u) | (fifth(i) & 0x400000u);
        u32 hi = (move_bits(q[i / 4], 8 * (i % 4) + 4, 18) & 0x3C0000u) | (fifth(16 + i) & 0x400000u);
        v[i] = fmaf(al, __uint_as_float(lo | 0x3F800000u), bl);
        v[16 + i] = fmaf(ah, __uint_as_float(hi | 0x3F800000u), bh);
    }
}

// Sixteen 4-bit values from four words: low nibbles to v[0..16), high nibbles to v[16..32), each
// through f(nibble, index).
template <class Fn>
__device__ __forceinline__ void nibbles16(const u32 (&q)[4], float* v, Fn f) {
#pragma unroll
    for (int i = 0; i < 16; i++) {
        u32 b = byte_of(q[i / 4], i % 4);
        v[i] = f(b & 15, i);
        v[16 + i] = f(b >> 4, 16 + i);
    }
}

// ---- 32-value blocks: one share per block, runs of 16 (low nibbles, then high ones). ----

struct Q4_0 {
    static const u32 BYTES = 18, VALUES = 32, SHARES = 1, RUNS = 2, RUN = 16;
    // d at byte 0, the quants at 2..18.
    typedef Words<5> Raw;
    static __device__ u32 col(u32 s, u32 r) { return 16 * r; }
    static __device__ Raw load(const u8* b, u32 s) {
        Raw w;
        w.load(b);
        return w;
    }
    static __device__ void quants(const Raw& w, u32 (&q)[4]) {
#pragma unroll
        for (int k = 0; k < 4; k++) q[k] = w.at(2 + 4 * k);
    }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        float d = half_bits(w.at(0));
        u32 q[4];
        quants(w, q);
        nibbles16_affine(q, v, d, -8.0f * d, d, -8.0f * d);
    }
};

struct IQ4_NL {
    static const u32 BYTES = 18, VALUES = 32, SHARES = 1, RUNS = 2, RUN = 16;
    typedef Q4_0::Raw Raw;
    static __device__ u32 col(u32 s, u32 r) { return 16 * r; }
    static __device__ Raw load(const u8* b, u32 s) { return Q4_0::load(b, s); }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        float d = half_bits(w.at(0));
        u32 q[4];
        Q4_0::quants(w, q);
        nibbles16(q, v, [&](u32 x, int) { return d * iq4_value(x); });
    }
};

struct Q4_1 {
    static const u32 BYTES = 20, VALUES = 32, SHARES = 1, RUNS = 2, RUN = 16;
    struct Raw {
        u32 dm, q[4];
    };
    static __device__ u32 col(u32 s, u32 r) { return 16 * r; }
    static __device__ Raw load(const u8* b, u32 s) {
        Raw w;
        w.dm = ld32(b);
#pragma unroll
        for (int k = 0; k < 4; k++) w.q[k] = ld32(b + 4 + 4 * k);
        return w;
    }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        float d = half_bits(w.dm), m = half_bits(w.dm >> 16);
        nibbles16_affine(w.q, v, d, m, d, m);
    }
};

// The fifth bit of value i sits at bit i of qh.
struct Q5_0 {
    static const u32 BYTES = 22, VALUES = 32, SHARES = 1, RUNS = 2, RUN = 16;
    // d at byte 0, qh at 2, the quants at 6..22.
    typedef Words<6> Raw;
    static __device__ u32 col(u32 s, u32 r) { return 16 * r; }
    static __device__ Raw load(const u8* b, u32 s) {
        Raw w;
        w.load(b);
        return w;
    }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        float d = half_bits(w.at(0));
        u32 qh = w.at(2), q[4];
#pragma unroll
        for (int k = 0; k < 4; k++) q[k] = w.at(6 + 4 * k);
        fives16_affine(q, v, d, -16.0f * d, d, -16.0f * d, [&](int i) { return move_bits(qh, i, 22); });
    }
};

struct Q5_1 {
    static const u32 BYTES = 24, VALUES = 32, SHARES = 1, RUNS = 2, RUN = 16;
    struct Raw {
        u32 dm, qh, q[4];
    };
    static __device__ u32 col(u32 s, u32 r) { return 16 * r; }
    static __device__ Raw load(const u8* b, u32 s) {
        Raw w;
        uint2 h = ld64(b), a = ld64(b + 8), c = ld64(b + 16);
        w.dm = h.x;
        w.qh = h.y;
        w.q[0] = a.x;
        w.q[1] = a.y;
        w.q[2] = c.x;
        w.q[3] = c.y;
        return w;
    }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        float d = half_bits(w.dm), m = half_bits(w.dm >> 16);
        u32 qh = w.qh;
        fives16_affine(w.q, v, d, m, d, m, [&](int i) { return move_bits(qh, i, 22); });
    }
};

// Two shares of 16 signed bytes.
struct Q8_0 {
    static const u32 BYTES = 34, VALUES = 32, SHARES = 2, RUNS = 1, RUN = 16;
    struct Raw {
        u32 d;
        Words<4> q;
    };
    static __device__ u32 col(u32 s, u32 r) { return 16 * s; }
    static __device__ Raw load(const u8* b, u32 s) {
        Raw w;
        w.d = ld16(b);
        w.q.load(b + 2 + 16 * s);
        return w;
    }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        // q + 128 = the byte with its top bit flipped, as unit<8>: d * q = 256d * unit - 384d.
        float a = 256.0f * half_bits(w.d), b = -1.5f * a;
#pragma unroll
        for (int i = 0; i < 16; i++) v[i] = fmaf(a, unit<8>(w.q.at(i / 4 * 4) ^ 0x80808080u, 8 * (i % 4)), b);
    }
};

// ---- 256-value super-blocks. ----

// Q4_K's and Q5_K's 6-bit scale and minimum of sub-block j from the 12 scale bytes in a, b, c.
__device__ __forceinline__ void scale_min_k4(u32 a, u32 b, u32 c, u32 j, u32& sc, u32& m) {
    if (j < 4) {
        sc = byte_of3(a, b, c, j) & 63;
        m = byte_of3(a, b, c, j + 4) & 63;
    } else {
        u32 hi = byte_of3(a, b, c, j + 4);
        sc = (hi & 15) | ((byte_of3(a, b, c, j - 4) >> 6) << 4);
        m = (hi >> 4) | ((byte_of3(a, b, c, j) >> 6) << 4);
    }
}

// Share s: 16 bytes of a 32-byte group g = s / 2, holding sub-block 2g's values l0.. (low
// nibbles) and sub-block 2g + 1's (high nibbles), l0 = 16 * (s % 2).
struct Q4_K {
    static const u32 BYTES = 144, VALUES = 256, SHARES = 8, RUNS = 2, RUN = 16;
    struct Raw {
        uint4 h, q;
    };
    static __device__ u32 col(u32 s, u32 r) { return 64 * (s >> 1) + 32 * r + 16 * (s & 1); }
    static __device__ Raw load(const u8* b, u32 s) { return {ld128(b), ld128(b + 16 + 16 * s)}; }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        float d = half_bits(w.h.x), dmin = half_bits(w.h.x >> 16);
        u32 g = s >> 1, sc0, m0, sc1, m1;
        scale_min_k4(w.h.y, w.h.z, w.h.w, 2 * g, sc0, m0);
        scale_min_k4(w.h.y, w.h.z, w.h.w, 2 * g + 1, sc1, m1);
        float d0 = d * qf(sc0, 0.0f), n0 = -(dmin * qf(m0, 0.0f));
        float d1 = d * qf(sc1, 0.0f), n1 = -(dmin * qf(m1, 0.0f));
        const u32 q[4] = {w.q.x, w.q.y, w.q.z, w.q.w};
        nibbles16_affine(q, v, d0, n0, d1, n1);
    }
};

// As Q4_K, with the fifth bits of value i at bit i / 32 of qh[i % 32]: this share's values sit at
// bytes l0..l0 + 16 of qh, bits 2g (low run) and 2g + 1 (high run).
struct Q5_K {
    static const u32 BYTES = 176, VALUES = 256, SHARES = 8, RUNS = 2, RUN = 16;
    struct Raw {
        uint4 h, qh, q;
    };
    static __device__ u32 col(u32 s, u32 r) { return Q4_K::col(s, r); }
    static __device__ Raw load(const u8* b, u32 s) {
        return {ld128(b), ld128(b + 16 + 16 * (s & 1)), ld128(b + 48 + 16 * s)};
    }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        float d = half_bits(w.h.x), dmin = half_bits(w.h.x >> 16);
        u32 g = s >> 1, sc0, m0, sc1, m1;
        scale_min_k4(w.h.y, w.h.z, w.h.w, 2 * g, sc0, m0);
        scale_min_k4(w.h.y, w.h.z, w.h.w, 2 * g + 1, sc1, m1);
        float d0 = d * qf(sc0, 0.0f), n0 = -(dmin * qf(m0, 0.0f));
        float d1 = d * qf(sc1, 0.0f), n1 = -(dmin * qf(m1, 0.0f));
        // Value i's fifth bit: bit 2g (low run) or 2g + 1 (high run) of its qh byte, i % 16.
        const u32 q[4] = {w.q.x, w.q.y, w.q.z, w.q.w};
        const u32 hb[4] = {w.qh.x >> (2 * g), w.qh.y >> (2 * g), w.qh.z >> (2 * g), w.qh.w >> (2 * g)};
        fives16_affine(q, v, d0, n0, d1, n1,
                       [&](int i) { return move_bits(hb[(i & 15) / 4], 8 * (i & 3) + (i >= 16), 22); });
    }
};

// Share s: half h = s / 8 of the block, bytes m..m + 8 (m = 8 * (s % 8)) of its 64 low-nibble
// bytes: values m.. (low nibbles) and 64 + m.. (high nibbles) of the half, whose top two bits are
// in qh[32h + m % 32 ..], shifted by 2 * (m / 32) and 4 more for the second run.
struct Q6_K {
    static const u32 BYTES = 210, VALUES = 256, SHARES = 16, RUNS = 2, RUN = 8;
    struct Raw {
        Words<2> ql, qh;
        u32 sc0, sc1, d;
    };
    static __device__ u32 col(u32 s, u32 r) { return 128 * (s >> 3) + 64 * r + 8 * (s & 7); }
    static __device__ Raw load(const u8* b, u32 s) {
        u32 h = s >> 3, m = 8 * (s & 7);
        Raw w;
        w.ql.load(b + 64 * h + m);
        w.qh.load(b + 128 + 32 * h + (m & 31));
        w.sc0 = ld8(b + 192 + 8 * h + m / 16);
        w.sc1 = ld8(b + 192 + 8 * h + 4 + m / 16);
        w.d = ld16(b + 208);
        return w;
    }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        // d_r * (q - 32) = 64 d_r * (1 + q/64) - 96 d_r, with q's six bits put in the top of
        // 1.0's mantissa: the low four at bits 17..20, the high two at 21..22.
        float d = half_bits(w.d);
        float a0 = 64.0f * d * (float)(int)(signed char)w.sc0, b0 = -1.5f * a0;
        float a1 = 64.0f * d * (float)(int)(signed char)w.sc1, b1 = -1.5f * a1;
        u32 shift = 2 * ((s & 7) >> 2);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            u32 lo = w.ql.at(4 * h), hi = w.qh.at(4 * h) >> shift;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                u32 f0 = (move_bits(lo, 8 * j, 17) & 0x1E0000u) | (move_bits(hi, 8 * j, 21) & 0x600000u);
                u32 f1 = (move_bits(lo, 8 * j + 4, 17) & 0x1E0000u) | (move_bits(hi, 8 * j + 4, 21) & 0x600000u);
                v[4 * h + j] = fmaf(a0, __uint_as_float(f0 | 0x3F800000u), b0);
                v[8 + 4 * h + j] = fmaf(a1, __uint_as_float(f1 | 0x3F800000u), b1);
            }
        }
    }
};

// Share s: bytes l..l + 8 (l = 8 * (s % 4)) of 2-bit group g = s / 4: four runs k of 8 values at
// columns 128g + 32k + l, in bits 2k of each byte, sub-blocks 8g + 2k + l / 16.
struct Q2_K {
    static const u32 BYTES = 84, VALUES = 256, SHARES = 8, RUNS = 4, RUN = 8;
    struct Raw {
        u32 q[2], sc[2], dm;
    };
    static __device__ u32 col(u32 s, u32 r) { return 128 * (s >> 2) + 32 * r + 8 * (s & 3); }
    static __device__ Raw load(const u8* b, u32 s) {
        u32 g = s >> 2, l = 8 * (s & 3);
        Raw w;
#pragma unroll
        for (int k = 0; k < 2; k++) {
            w.q[k] = ld32(b + 16 + 32 * g + l + 4 * k);
            w.sc[k] = ld32(b + 8 * g + 4 * k);
        }
        w.dm = ld32(b + 80);
        return w;
    }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        float d = half_bits(w.dm), dmin = half_bits(w.dm >> 16);
        u32 half = (s & 3) >> 1;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            u32 idx = half + 2 * k, sc = byte_of(w.sc[idx / 4], idx % 4);
            float dl = d * qf(sc & 15, 0.0f), nl = -(dmin * qf(sc >> 4, 0.0f));
#pragma unroll
            for (int j = 0; j < 8; j++) v[8 * k + j] = fmaf(dl, qf((byte_of(w.q[j / 4], j % 4) >> (2 * k)) & 3, 0.0f), nl);
        }
    }
};

// Q3_K's 6-bit scale i (stored with an offset of 32) from the 12 scale bytes in a, b, c.
__device__ __forceinline__ float scale_q3_k(u32 a, u32 b, u32 c, u32 i) {
    u32 low = i < 8 ? byte_of3(a, b, c, i) & 15 : byte_of3(a, b, c, i - 8) >> 4;
    u32 high = (byte_of3(a, b, c, 8 + (i & 3)) >> (2 * (i >> 2))) & 3;
    return qf(low | (high << 4), 32.0f);
}

// As Q2_K's shares; the third bit of value 128g + 32k + l + j is bit 4g + k of hmask[l + j]
// (set means no -4).
struct Q3_K {
    static const u32 BYTES = 110, VALUES = 256, SHARES = 8, RUNS = 4, RUN = 8;
    struct Raw {
        Words<2> hm, q;
        Words<3> sc;
        u32 d;
    };
    static __device__ u32 col(u32 s, u32 r) { return Q2_K::col(s, r); }
    static __device__ Raw load(const u8* b, u32 s) {
        u32 g = s >> 2, l = 8 * (s & 3);
        Raw w;
        w.hm.load(b + l);
        w.q.load(b + 32 + 32 * g + l);
        w.sc.load(b + 96);
        w.d = ld16(b + 108);
        return w;
    }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        float d = half_bits(w.d);
        u32 g = s >> 2, half = (s & 3) >> 1;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float dl = d * scale_q3_k(w.sc.at(0), w.sc.at(4), w.sc.at(8), 8 * g + 2 * k + half);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                u32 low = (byte_of(w.q.at(j / 4 * 4), j % 4) >> (2 * k)) & 3;
                u32 high = (byte_of(w.hm.at(j / 4 * 4), j % 4) >> (4 * g + k)) & 1;
                v[8 * k + j] = dl * qf(low | (high << 2), 4.0f);
            }
        }
    }
};

// Share s: sub-block s, 16 bytes of codebook indices (low nibbles values 0..16, high 16..32).
struct IQ4_XS {
    static const u32 BYTES = 136, VALUES = 256, SHARES = 8, RUNS = 2, RUN = 16;
    struct Raw {
        uint2 h, q0, q1;
    };
    static __device__ u32 col(u32 s, u32 r) { return 32 * s + 16 * r; }
    static __device__ Raw load(const u8* b, u32 s) { return {ld64(b), ld64(b + 8 + 16 * s), ld64(b + 16 + 16 * s)}; }
    static __device__ void decode(const Raw& w, u32 s, float* v) {
        u32 low = (w.h.y >> (4 * s)) & 15, high = (w.h.x >> (16 + 2 * s)) & 3;
        float dl = half_bits(w.h.x) * qf(low | (high << 4), 32.0f);
        const u32 q[4] = {w.q0.x, w.q0.y, w.q1.x, w.q1.y};
        nibbles16(q, v, [&](u32 x, int) { return dl * iq4_value(x); });
    }
};

// ---- The kernels, the same for every format. ----
#ifndef QUANT_HOST

// acc[r] += the share's values . x[r] at their columns; x points at the block's first column.
template <class F, int ROWS>
__device__ __forceinline__ void dot_share(float (&acc)[ROWS], const typename F::Raw& raw, u32 s, const float* x,
                                          u32 n) {
    float v[F::RUNS * F::RUN];
    F::decode(raw, s, v);
#pragma unroll
    for (u32 k = 0; k < F::RUNS; k++) {
        u32 c = F::col(s, k);
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            const float4* xr = (const float4*)(x + (size_t)r * n + c);
#pragma unroll
            for (u32 j = 0; j < F::RUN / 4; j++) {
                float4 xv = xr[j];
                const float* vv = v + k * F::RUN + 4 * j;
                acc[r] += vv[0] * xv.x + vv[1] * xv.y + vv[2] * xv.z + vv[3] * xv.w;
            }
        }
    }
}

// acc[r] += x[r] . w over this warp's part of a row w of n values in format F (dot_rows of
// kernels/matmul.cu for blocks): the lanes take consecutive shares, two at a time, loading the
// next two while they multiply the current ones. The first loads go out before waiting for the
// previous kernel; an `early` product does not wait at all.
template <class F, int ROWS>
__device__ __forceinline__ void qdot_rows(float (&acc)[ROWS], const float* x, const u8* w, u32 n, Share sh,
                                          bool live, FoldedNorm norm, bool early) {
    const u32 U = 2, STEP = 32 * U;
    u32 lane = threadIdx.x & 31;
    u32 total = n / F::VALUES * F::SHARES;
    u32 chunk = (total + sh.split * STEP - 1) / (sh.split * STEP) * STEP;
    u32 begin = min(total, sh.part * chunk), end = min(total, begin + chunk);
    auto load = [&](u32 t) { return F::load(w + (size_t)(t / F::SHARES) * F::BYTES, t % F::SHARES); };
    typename F::Raw raw[U], next[U];
    if (live) {
#pragma unroll
        for (u32 u = 0; u < U; u++)
            if (begin + lane + 32 * u < end) raw[u] = load(begin + lane + 32 * u);
    }
    if (!early) await_inputs();
    if (norm.w) x = stage_norm<ROWS>(x, n, norm);
    if (!live) return;
    for (u32 t0 = begin + lane; t0 < end; t0 += STEP) {
#pragma unroll
        for (u32 u = 0; u < U; u++)
            if (t0 + STEP + 32 * u < end) next[u] = load(t0 + STEP + 32 * u);
#pragma unroll
        for (u32 u = 0; u < U; u++) {
            u32 t = t0 + 32 * u;
            if (t < end) dot_share<F, ROWS>(acc, raw[u], t % F::SHARES, x + (size_t)(t / F::SHARES) * F::VALUES, n);
        }
#pragma unroll
        for (u32 u = 0; u < U; u++) raw[u] = next[u];
    }
}

// Hands each value of share i of a row (counting shares along the row) to put(column, value).
template <class F, class Put>
__device__ __forceinline__ void store_share(const typename F::Raw& raw, u32 i, Put put) {
    float v[F::RUNS * F::RUN];
    u32 s = i % F::SHARES, base = i / F::SHARES * F::VALUES;
    F::decode(raw, s, v);
#pragma unroll
    for (u32 k = 0; k < F::RUNS; k++)
#pragma unroll
        for (u32 j = 0; j < F::RUN; j++) put(base + F::col(s, k) + j, v[k * F::RUN + j]);
}

// gemv_<format><R>: out[r][o] (rows `stride` apart) = act(x[r] . w[o] + bias[o]), or += when
// `accumulate`, for the n_out rows of one segment of a weight: the backend offsets out and bias
// to the segment's first output. Parameters and grid as gemv in kernels/matmul.cu.
//
// dequantize_<format>: rows x n values of w into out in the storage type, one share a thread.
//
// embed_<format>: out[r] = table[ids[r]] for the ids in [first, first + rows), the table's rows
// from `first` on being this segment; one block a row of out.
#define QUANT_GEMV(F, name, R)                                                                       \
    extern "C" __global__ void gemv_##name##R(const float* x, const u8* w, const wt* bias, float* out, \
                                              u32 n_out, u32 n_in, u32 stride, u32 accumulate,       \
                                              u32 act, u32 early, NORM_PARAMS, u32 split) {          \
        Share sh(split);                                                                             \
        bool live = sh.o < n_out;                                                                    \
        float acc[R] = {};                                                                           \
        const u8* wo = w + (size_t)sh.o * (n_in / F::VALUES * F::BYTES);                             \
        qdot_rows<F, R>(acc, x, wo, n_in, sh, live, {norm_w, norm_b, eps, rms}, early);              \
        float bo = bias && live ? to_f32(bias[sh.o]) : 0.0f;                                         \
        store_rows<R>(acc, sh, live, bo, out, stride, accumulate, act);                              \
        if (early && blockIdx.x == gridDim.x - 1 && threadIdx.x == 0) await_inputs();                \
    }
#define QUANT_KERNELS(F, name)                                                                       \
    QUANT_GEMV(F, name, 1)                                                                           \
    QUANT_GEMV(F, name, 2)                                                                           \
    QUANT_GEMV(F, name, 3)                                                                           \
    QUANT_GEMV(F, name, 4)                                                                           \
    extern "C" __global__ void dequantize_##name(const u8* w, wt* out, u32 rows, u32 n) {            \
        u32 per_row = n / F::VALUES * F::SHARES, t = blockIdx.x * blockDim.x + threadIdx.x;         \
        bool live = t < rows * per_row;                                                              \
        u32 row = live ? t / per_row : 0, i = t % per_row;                                           \
        typename F::Raw raw;                                                                         \
        const u8* wr = w + (size_t)row * (n / F::VALUES * F::BYTES);                                 \
        if (live) raw = F::load(wr + (size_t)(i / F::SHARES) * F::BYTES, i % F::SHARES);            \
        await_inputs();                                                                              \
        if (!live) return;                                                                           \
        wt* o = out + (size_t)row * n;                                                               \
        store_share<F>(raw, i, [&](u32 c, float v) { o[c] = from_f32(v); });                         \
    }                                                                                                \
    extern "C" __global__ void embed_##name(const u8* table, const u32* ids, float* out, u32 dim,    \
                                            u32 first, u32 rows) {                                   \
        await_inputs();                                                                              \
        u32 r = blockIdx.x, id = ids[r];                                                             \
        if (id < first || id - first >= rows) return;                                                \
        const u8* row = table + (size_t)(id - first) * (dim / F::VALUES * F::BYTES);                 \
        float* o = out + (size_t)r * dim;                                                            \
        for (u32 i = threadIdx.x; i < dim / F::VALUES * F::SHARES; i += blockDim.x) {                \
            typename F::Raw raw = F::load(row + (size_t)(i / F::SHARES) * F::BYTES, i % F::SHARES);  \
            store_share<F>(raw, i, [&](u32 c, float v) { o[c] = v; });                               \
        }                                                                                            \
    }

// The backend compiles this file once per format it meets, appending the format's
// QUANT_KERNELS(<struct>, <name in lower case>) line (src/backend/cuda/quant.rs lists them): all
// twelve formats in one module took half a minute of NVRTC.
#endif
