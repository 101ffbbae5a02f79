// oneDNN primitives as XLA FFI handlers: convolution forward, backward-data,
// backward-weights; training-mode batch normalization forward and backward.
//
// Activations are NHWC (oneDNN's nhwc), kernels HWIO (oneDNN's hwio), both
// row-major as JAX hands them over.  bf16 src/weights/dst accumulate in f32 and
// the kernel gradient is written in f32; f32 in, f32 out is supported too.
// Batch norm: bf16 or f32 activations, f32 scale, shift, statistics and their
// gradients.  Built by build.py; loaded and registered by __init__.py.
#include <oneapi/dnnl/dnnl.hpp>

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// How many OpenMP threads one conv uses (jaxres_onednn_set_threads).  With
// one, each XLA thread that calls in runs its conv alone, and XLA's own pool
// runs independent convs (e.g. a layer's two gradients) side by side.  With
// more, convs take turns: two teams at once would oversubscribe the cores.
std::atomic<int> threads{1};

std::mutex& TurnLock() {
  static std::mutex mu;
  return mu;
}

// Held while a primitive runs: with more than one thread per primitive, one
// primitive at a time (two OpenMP teams at once would oversubscribe the cores).
class Turn {
 public:
  Turn() : n_(threads.load()), lock_(TurnLock(), std::defer_lock) {
    if (n_ > 1) lock_.lock();
    omp_set_num_threads(n_);  // this calling thread's teams
  }

 private:
  int n_;
  std::unique_lock<std::mutex> lock_;
};

// Per calling thread, so that concurrent primitives never share one.
dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// A grow-only 64-byte aligned buffer, kept between calls so that the
// scratchpad and the reordered kernel are not page-faulted in on every step.
class Buffer {
 public:
  void* Get(size_t bytes) {
    if (bytes > size_) {
      ptr_.reset(static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
      size_ = bytes;
    }
    return ptr_.get();
  }

 private:
  struct Free { void operator()(char* p) const { std::free(p); } };
  std::unique_ptr<char, Free> ptr_;
  size_t size_ = 0;
};

enum class Kind { kForward, kBackwardData, kBackwardWeights };

// Everything that fixes a primitive: kind, dtype, shapes, strides, padding.
using Key = std::tuple<int, int, std::vector<int64_t>>;

struct Conv {
  dnnl::primitive conv;
  memory::desc user_weights, weights;  // HWIO (as JAX has it) and the primitive's layout
  std::unique_ptr<dnnl::reorder> weights_reorder;  // user <-> primitive, if they differ
  memory::desc scratchpad;
  // A kernel gradient as one matrix product (conv is then a matmul):
  // dW[(kh, kw, c), o] = P^T @ dY, P the (N*OH*OW, KH*KW*C) patches of x.
  bool as_matmul = false;
  memory::desc patches_t, diff_dst_2d, diff_weights_2d;
};

// Output positions per image up to which the kernel gradient is a matmul.
// oneDNN 3.2's brgconv backward-weights parallelises over the output's rows,
// so a 4x4 output leaves the AMX units idle: 31 ms against 6 ms as im2col +
// matmul for 512->512 3x3 at batch 128 (2-core Xeon; 8x8: 10.4 vs 8.2 ms;
// 16x16: 6.1 vs 16.7 ms).
constexpr int64_t kMatmulMaxOutputPixels = 64;

memory::data_type DnnlType(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::BF16: return memory::data_type::bf16;
    case ffi::DataType::F32: return memory::data_type::f32;
    default: return memory::data_type::undef;
  }
}

// Conv geometry in oneDNN's logical order (N, C, H, W) / (O, I, KH, KW).
struct Shapes {
  memory::dims src, weights, dst, strides, pad_l, pad_r;
};

Shapes GetShapes(ffi::AnyBuffer::Dimensions x, ffi::AnyBuffer::Dimensions w,
                 ffi::AnyBuffer::Dimensions y, ffi::Span<const int64_t> strides,
                 ffi::Span<const int64_t> padding) {
  return {{x[0], x[3], x[1], x[2]}, {w[3], w[2], w[0], w[1]}, {y[0], y[3], y[1], y[2]},
          {strides[0], strides[1]}, {padding[0], padding[2]}, {padding[1], padding[3]}};
}

// Builds (once per key) the primitive for `kind`.  `dt` is the activations'
// type; the weights' type is `dt` too, except the f32 kernel gradient.
// Primitives are immutable once built and safe to run from several threads.
Conv& GetConv(Kind kind, memory::data_type dt, const Shapes& s) {
  static std::mutex mu;
  static auto* cache = new std::map<Key, Conv>();  // never freed: used until exit
  std::lock_guard<std::mutex> hold(mu);
  std::vector<int64_t> dims;
  for (const auto* v : {&s.src, &s.weights, &s.dst, &s.strides, &s.pad_l, &s.pad_r})
    dims.insert(dims.end(), v->begin(), v->end());
  Key key{static_cast<int>(kind), static_cast<int>(dt), dims};
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;

  auto& eng = Engine();
  auto wdt = kind == Kind::kBackwardWeights ? memory::data_type::f32 : dt;
  memory::desc src(s.src, dt, tag::nhwc), dst(s.dst, dt, tag::nhwc);
  memory::desc user_w(s.weights, wdt, tag::hwio);
  memory::desc any_w(s.weights, wdt, tag::any);  // the primitive picks its kernel layout
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto alg = dnnl::algorithm::convolution_direct;
  // The backward primitives need the forward one as a hint.
  dnnl::convolution_forward::primitive_desc fwd(
      eng, dnnl::prop_kind::forward_training, alg, src, memory::desc(s.weights, dt, tag::any),
      dst, s.strides, s.pad_l, s.pad_r, attr);
  Conv c;
  c.user_weights = user_w;
  int64_t m = s.dst[0] * s.dst[2] * s.dst[3], k = s.weights[1] * s.weights[2] * s.weights[3];
  if (kind == Kind::kBackwardWeights && s.dst[2] * s.dst[3] <= kMatmulMaxOutputPixels) {
    c.as_matmul = true;
    c.patches_t = memory::desc({k, m}, dt, memory::dims{1, k});  // P (m, k) read transposed
    c.diff_dst_2d = memory::desc({m, s.dst[1]}, dt, tag::ab);
    c.diff_weights_2d = memory::desc({k, s.dst[1]}, wdt, tag::ab);  // = HWIO
    dnnl::matmul::primitive_desc pd(eng, c.patches_t, c.diff_dst_2d, c.diff_weights_2d, attr);
    c.conv = dnnl::matmul(pd);
    c.scratchpad = pd.scratchpad_desc();
    return cache->emplace(key, std::move(c)).first->second;
  }
  if (kind == Kind::kForward) {
    c.conv = dnnl::convolution_forward(fwd);
    c.weights = fwd.weights_desc();
    c.scratchpad = fwd.scratchpad_desc();
  } else if (kind == Kind::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        eng, alg, src, any_w, dst, s.strides, s.pad_l, s.pad_r, fwd, attr);
    c.conv = dnnl::convolution_backward_data(pd);
    c.weights = pd.weights_desc();
    c.scratchpad = pd.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        eng, alg, src, any_w, dst, s.strides, s.pad_l, s.pad_r, fwd, attr);
    c.conv = dnnl::convolution_backward_weights(pd);
    c.weights = pd.diff_weights_desc();
    c.scratchpad = pd.scratchpad_desc();
  }
  if (c.weights != user_w) {
    // A kernel gradient goes from the primitive's layout to HWIO, a kernel the other way.
    bool out = kind == Kind::kBackwardWeights;
    dnnl::reorder::primitive_desc rpd(eng, out ? c.weights : user_w, eng,
                                      out ? user_w : c.weights);
    c.weights_reorder = std::make_unique<dnnl::reorder>(rpd);
  }
  return cache->emplace(key, std::move(c)).first->second;
}

// The (N*OH*OW, KH*KW*C) patch matrix of NHWC `x` (element size `bytes`),
// zeros where the window reads padding; rows split over the OpenMP team.
void Im2col(const char* x, char* p, const Shapes& s, size_t bytes) {
  const int64_t n = s.src[0], c = s.src[1], h = s.src[2], w = s.src[3];
  const int64_t kh = s.weights[2], kw = s.weights[3], oh = s.dst[2], ow = s.dst[3];
  const size_t row = kh * kw * c * bytes, pixel = c * bytes;
#pragma omp parallel for collapse(2)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j) {
        char* dst = p + ((b * oh + i) * ow + j) * row;
        for (int64_t u = 0; u < kh; ++u)
          for (int64_t v = 0; v < kw; ++v, dst += pixel) {
            int64_t y = i * s.strides[0] - s.pad_l[0] + u, x_ = j * s.strides[1] - s.pad_l[1] + v;
            if (y < 0 || y >= h || x_ < 0 || x_ >= w)
              std::memset(dst, 0, pixel);
            else
              std::memcpy(dst, x + ((b * h + y) * w + x_) * pixel, pixel);
          }
      }
}

// Runs one conv.  `x`, `w`, `y`: the NHWC input, HWIO kernel and NHWC output
// buffers (each the primal or its gradient, as `kind` says).
ffi::Error Run(Kind kind, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer y,
               ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  auto dt = DnnlType(x.element_type());
  if (dt == memory::data_type::undef || y.element_type() != x.element_type())
    return ffi::Error::InvalidArgument("onednn conv: activations must be both bf16 or f32");
  auto wdt = kind == Kind::kBackwardWeights ? memory::data_type::f32 : dt;
  if (DnnlType(w.element_type()) != wdt)
    return ffi::Error::InvalidArgument("onednn conv: unexpected kernel dtype");
  if (x.dimensions().size() != 4 || w.dimensions().size() != 4 ||
      y.dimensions().size() != 4 || strides.size() != 2 || padding.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: expects 2-D NHWC x HWIO");
  Shapes s = GetShapes(x.dimensions(), w.dimensions(), y.dimensions(), strides, padding);
  try {
    Conv& c = GetConv(kind, dt, s);
    Turn turn;
    thread_local Buffer scratch, weights_buf, patches;
    auto& eng = Engine();
    auto& stream = Stream();
    if (c.as_matmul) {
      size_t bytes = dt == memory::data_type::bf16 ? 2 : 4;
      char* p = static_cast<char*>(patches.Get(c.patches_t.get_size()));
      Im2col(static_cast<const char*>(x.untyped_data()), p, s, bytes);
      c.conv.execute(stream, {{DNNL_ARG_SRC, memory(c.patches_t, eng, p)},
                              {DNNL_ARG_WEIGHTS, memory(c.diff_dst_2d, eng, y.untyped_data())},
                              {DNNL_ARG_DST, memory(c.diff_weights_2d, eng, w.untyped_data())},
                              {DNNL_ARG_SCRATCHPAD, memory(c.scratchpad, eng,
                                                           scratch.Get(c.scratchpad.get_size()))}});
      stream.wait();
      return ffi::Error::Success();
    }
    memory xm({s.src, dt, tag::nhwc}, eng, x.untyped_data());
    memory ym({s.dst, dt, tag::nhwc}, eng, y.untyped_data());
    memory user_w(c.user_weights, eng, w.untyped_data());
    memory wm = c.weights_reorder ? memory(c.weights, eng, weights_buf.Get(c.weights.get_size()))
                                  : user_w;
    memory pad(c.scratchpad, eng, scratch.Get(c.scratchpad.get_size()));
    if (kind == Kind::kForward) {
      if (c.weights_reorder) c.weights_reorder->execute(stream, user_w, wm);
      c.conv.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm},
                              {DNNL_ARG_DST, ym}, {DNNL_ARG_SCRATCHPAD, pad}});
    } else if (kind == Kind::kBackwardData) {
      if (c.weights_reorder) c.weights_reorder->execute(stream, user_w, wm);
      c.conv.execute(stream, {{DNNL_ARG_DIFF_SRC, xm}, {DNNL_ARG_WEIGHTS, wm},
                              {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_SCRATCHPAD, pad}});
    } else {
      c.conv.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_WEIGHTS, wm},
                              {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_SCRATCHPAD, pad}});
      if (c.weights_reorder) c.weights_reorder->execute(stream, wm, user_w);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  return Run(Kind::kForward, x, w, *y, strides, padding);
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  return Run(Kind::kBackwardData, *dx, w, dy, strides, padding);
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                           ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  return Run(Kind::kBackwardWeights, x, *dw, dy, strides, padding);
}


// Batch normalization over N, H, W of an NHWC tensor, per channel, training
// mode: forward writes y and the batch mean and (biased) variance; backward
// takes them back with x and dy and writes dx, dscale, dshift.  The flags:
// scale and shift given (f32, one per channel).
using BnKey = std::tuple<int, int, std::vector<int64_t>, float>;

struct BatchNorm {
  dnnl::primitive fwd, bwd;
  memory::desc data, stat, scratch_fwd, scratch_bwd;
};

BatchNorm& GetBatchNorm(memory::data_type dt, const memory::dims& dims, float epsilon) {
  static std::mutex mu;
  static auto* cache = new std::map<BnKey, BatchNorm>();  // never freed: used until exit
  std::lock_guard<std::mutex> hold(mu);
  BnKey key{0, static_cast<int>(dt), dims, epsilon};
  auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  auto& eng = Engine();
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  memory::desc data(dims, dt, tag::nhwc);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::batch_normalization_forward::primitive_desc fwd(
      eng, dnnl::prop_kind::forward_training, data, data, epsilon, flags, attr);
  dnnl::batch_normalization_backward::primitive_desc bwd(
      eng, dnnl::prop_kind::backward, data, data, data, epsilon, flags, fwd, attr);
  BatchNorm b{dnnl::batch_normalization_forward(fwd), dnnl::batch_normalization_backward(bwd),
              data, fwd.mean_desc(), fwd.scratchpad_desc(), bwd.scratchpad_desc()};
  return cache->emplace(key, std::move(b)).first->second;
}

// (N, H, W, C) as oneDNN's logical (N, C, H, W).
memory::dims BnDims(ffi::AnyBuffer::Dimensions x) { return {x[0], x[3], x[1], x[2]}; }

ffi::Error BnCheck(ffi::AnyBuffer x, std::initializer_list<ffi::AnyBuffer> same,
                   std::initializer_list<ffi::AnyBuffer> per_channel) {
  if (DnnlType(x.element_type()) == memory::data_type::undef || x.dimensions().size() != 4)
    return ffi::Error::InvalidArgument("onednn batch norm: expects bf16 or f32 NHWC");
  for (auto& b : same)
    if (b.element_type() != x.element_type() || b.element_count() != x.element_count())
      return ffi::Error::InvalidArgument("onednn batch norm: activation shapes or types differ");
  for (auto& b : per_channel)
    if (b.element_type() != ffi::DataType::F32 ||
        b.element_count() != static_cast<size_t>(x.dimensions()[3]))
      return ffi::Error::InvalidArgument("onednn batch norm: expects f32 per-channel vectors");
  return ffi::Error::Success();
}

// Runs the forward (or backward) primitive for `x`'s shape with the arguments
// `args(b, m)` names, `m(desc, pointer)` wrapping a buffer, plus a scratchpad.
template <typename Args>
ffi::Error RunBatchNorm(ffi::AnyBuffer x, float epsilon, bool forward, Args args) {
  try {
    BatchNorm& b = GetBatchNorm(DnnlType(x.element_type()), BnDims(x.dimensions()), epsilon);
    auto m = [](const memory::desc& d, void* p) { return memory(d, Engine(), p); };
    std::unordered_map<int, memory> all = args(b, m);
    const memory::desc& pad = forward ? b.scratch_fwd : b.scratch_bwd;
    Turn turn;
    thread_local Buffer scratch;
    all.emplace(DNNL_ARG_SCRATCHPAD, m(pad, scratch.Get(pad.get_size())));
    (forward ? b.fwd : b.bwd).execute(Stream(), all);
    Stream().wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn batch norm: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error BatchNormForward(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                            ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                            ffi::Result<ffi::AnyBuffer> var, float epsilon) {
  if (auto e = BnCheck(x, {*y}, {scale, shift, *mean, *var}); e.failure()) return e;
  return RunBatchNorm(x, epsilon, true, [&](BatchNorm& b, auto m) {
    return std::unordered_map<int, memory>{
        {DNNL_ARG_SRC, m(b.data, x.untyped_data())}, {DNNL_ARG_DST, m(b.data, y->untyped_data())},
        {DNNL_ARG_SCALE, m(b.stat, scale.untyped_data())},
        {DNNL_ARG_SHIFT, m(b.stat, shift.untyped_data())},
        {DNNL_ARG_MEAN, m(b.stat, mean->untyped_data())},
        {DNNL_ARG_VARIANCE, m(b.stat, var->untyped_data())}};
  });
}

ffi::Error BatchNormBackward(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::AnyBuffer mean,
                             ffi::AnyBuffer var, ffi::AnyBuffer scale,
                             ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dscale,
                             ffi::Result<ffi::AnyBuffer> dshift, float epsilon) {
  if (auto e = BnCheck(x, {dy, *dx}, {mean, var, scale, *dscale, *dshift}); e.failure())
    return e;
  return RunBatchNorm(x, epsilon, false, [&](BatchNorm& b, auto m) {
    return std::unordered_map<int, memory>{
        {DNNL_ARG_SRC, m(b.data, x.untyped_data())},
        {DNNL_ARG_DIFF_DST, m(b.data, dy.untyped_data())},
        {DNNL_ARG_MEAN, m(b.stat, mean.untyped_data())},
        {DNNL_ARG_VARIANCE, m(b.stat, var.untyped_data())},
        {DNNL_ARG_SCALE, m(b.stat, scale.untyped_data())},
        {DNNL_ARG_DIFF_SRC, m(b.data, dx->untyped_data())},
        {DNNL_ARG_DIFF_SCALE, m(b.stat, dscale->untyped_data())},
        {DNNL_ARG_DIFF_SHIFT, m(b.stat, dshift->untyped_data())}};
  });
}

}  // namespace

// Two operands, one result; padding is (top, bottom, left, right).
#define JAXRES_CONV_BINDING                        \
  ffi::Ffi::Bind()                                 \
      .Arg<ffi::AnyBuffer>()                       \
      .Arg<ffi::AnyBuffer>()                       \
      .Ret<ffi::AnyBuffer>()                       \
      .Attr<ffi::Span<const int64_t>>("strides")   \
      .Attr<ffi::Span<const int64_t>>("padding")

// conv(x: NHWC, w: HWIO) -> y: NHWC
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxres_onednn_conv_fwd, Forward, JAXRES_CONV_BINDING);
// dx(dy: NHWC, w: HWIO) -> dx: NHWC
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxres_onednn_conv_bwd_data, BackwardData,
                              JAXRES_CONV_BINDING);
// dw(x: NHWC, dy: NHWC) -> dw: HWIO, f32
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxres_onednn_conv_bwd_weights, BackwardWeights,
                              JAXRES_CONV_BINDING);

// bn(x: NHWC, scale, shift) -> y: NHWC, mean, var
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    jaxres_onednn_bn_fwd, BatchNormForward,
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
        .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
        .Attr<float>("epsilon"));
// bn'(x, dy, mean, var, scale) -> dx, dscale, dshift
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    jaxres_onednn_bn_bwd, BatchNormBackward,
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
        .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
        .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
        .Attr<float>("epsilon"));

extern "C" void jaxres_onednn_set_threads(int n) { threads = n > 0 ? n : 1; }

// Creates the engine (the one oneDNN call that fails on a build whose CPU
// runtime is absent here); nullptr when it works, else why not.
extern "C" const char* jaxres_onednn_init() {
  static std::string error;
  try {
    Engine();
    Stream();
    return nullptr;
  } catch (const dnnl::error& e) {
    error = std::string("oneDNN could not create a CPU engine: ") + e.what();
    return error.c_str();
  }
}
