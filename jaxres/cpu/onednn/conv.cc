// oneDNN convolutions as XLA FFI handlers: forward, backward-data, backward-weights.
//
// Activations are NHWC (oneDNN's nhwc), kernels HWIO (oneDNN's hwio), both
// row-major as JAX hands them over.  bf16 src/weights/dst accumulate in f32 and
// the kernel gradient is written in f32; f32 in, f32 out is supported too.
// Built by build.py; loaded and registered by __init__.py.
#include <oneapi/dnnl/dnnl.hpp>

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
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

// Per calling thread, so that concurrent convs never share one.
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
};

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
    int n = threads.load();
    std::unique_lock<std::mutex> turn(TurnLock(), std::defer_lock);
    if (n > 1) turn.lock();
    omp_set_num_threads(n);  // this calling thread's teams
    thread_local Buffer scratch, weights_buf;
    auto& eng = Engine();
    auto& stream = Stream();
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
