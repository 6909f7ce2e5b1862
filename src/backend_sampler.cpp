// Shape checks of the sampler's ops and the class-conditional / squared energies.
#include "jem/backend.hpp"

namespace jem {

namespace {
// Throws unless `t` is an I32 vector of n entries on `dev`.
void check_index(const Tensor& t, std::int64_t n, Device dev, const char* op, const char* what) {
  JEM_CHECK(t.defined() && t.dtype() == DType::I32 && t.device() == dev, op, ": '", what,
            "' must be an I32 tensor on ", to_string(dev));
  JEM_CHECK(t.numel() == n, op, ": '", what, "' has ", t.numel(), " entries, expected ", n);
}

// Throws unless every slot of `index` that is used lies in [0, slots) (gather does not read
// the slot of a row it reinitialises: `reinit` may be null). The CPU kernels read and write
// buffer[index[b]] unchecked, so an out-of-range slot would touch memory outside the buffer;
// host indices are checked here (device indices cannot be read without a copy and a sync).
void check_slots(const Tensor& index, const Tensor* reinit, std::int64_t slots, const char* op) {
  if (index.device() != Device::CPU) return;
  const std::int32_t* idx = index.data<std::int32_t>();
  const std::int32_t* re = reinit ? reinit->data<std::int32_t>() : nullptr;
  for (std::int64_t b = 0; b < index.numel(); ++b)
    JEM_CHECK((re && re[b]) || (idx[b] >= 0 && idx[b] < slots), op, ": index[", b, "] = ",
              idx[b], " outside the buffer's [0, ", slots, ")");
}
}  // namespace

void Backend::class_energy_forward_backward(const Tensor& logits, const Tensor& labels,
                                            const Tensor& energy, const Tensor& dlogits,
                                            float grad_scale) {
  check_tensor(logits, "class_energy", "logits");
  check_tensor(energy, "class_energy", "energy");
  check_tensor(dlogits, "class_energy", "dlogits");
  JEM_CHECK(logits.shape().rank() == 2, "class_energy: logits must be [N, K], got ",
            logits.shape().str());
  const int N = int(logits.dim(0)), K = int(logits.dim(1));
  check_index(labels, N, device(), "class_energy", "labels");
  JEM_CHECK(energy.numel() == N && dlogits.shape() == logits.shape(), "class_energy: logits ",
            logits.shape().str(), ", energy ", energy.shape().str(), ", dlogits ",
            dlogits.shape().str());
  class_energy_impl(N, K, logits.data<float>(), labels.data<std::int32_t>(), energy.data<float>(),
                    dlogits.data<float>(), grad_scale);
}

void Backend::energy_sq_forward_backward(const Tensor& logits, const Tensor& energy,
                                         const Tensor& dlogits, float grad_scale, float sq_scale) {
  check_tensor(logits, "energy_sq", "logits");
  check_tensor(energy, "energy_sq", "energy");
  check_tensor(dlogits, "energy_sq", "dlogits");
  JEM_CHECK(logits.shape().rank() == 2, "energy_sq: logits must be [N, K], got ",
            logits.shape().str());
  const int N = int(logits.dim(0)), K = int(logits.dim(1));
  JEM_CHECK(energy.numel() == N && dlogits.shape() == logits.shape(), "energy_sq: logits ",
            logits.shape().str(), ", energy ", energy.shape().str(), ", dlogits ",
            dlogits.shape().str());
  energy_sq_impl(N, K, logits.data<float>(), energy.data<float>(), dlogits.data<float>(),
                 grad_scale, sq_scale);
}

void Backend::buffer_gather(const Tensor& buffer, const Tensor& index, const Tensor& reinit,
                            const Tensor& out, const NoiseKey& key) {
  check_tensor(buffer, "buffer_gather", "buffer");
  check_tensor(out, "buffer_gather", "out");
  check_nchw(buffer, "buffer_gather", "buffer");
  check_nchw(out, "buffer_gather", "out");
  JEM_CHECK(buffer.shape().rank() >= 2 && out.shape().rank() == buffer.shape().rank() &&
                buffer.dim(0) > 0,
            "buffer_gather: buffer ", buffer.shape().str(), ", out ", out.shape().str());
  const int B = int(out.dim(0));
  const std::int64_t per = out.numel() / std::max<std::int64_t>(B, 1);
  JEM_CHECK(buffer.numel() / buffer.dim(0) == per, "buffer_gather: buffer ",
            buffer.shape().str(), " and out ", out.shape().str(), " hold different samples");
  check_index(index, B, device(), "buffer_gather", "index");
  check_index(reinit, B, device(), "buffer_gather", "reinit");
  check_slots(index, &reinit, buffer.dim(0), "buffer_gather");
  buffer_gather_impl(B, per, buffer.data<float>(), index.data<std::int32_t>(),
                     reinit.data<std::int32_t>(), out.data<float>(), key);
}

void Backend::buffer_scatter(const Tensor& x, const Tensor& index, const Tensor& buffer) {
  check_tensor(x, "buffer_scatter", "x");
  check_tensor(buffer, "buffer_scatter", "buffer");
  check_nchw(x, "buffer_scatter", "x");
  check_nchw(buffer, "buffer_scatter", "buffer");
  JEM_CHECK(buffer.shape().rank() >= 2 && x.shape().rank() == buffer.shape().rank() &&
                buffer.dim(0) > 0,
            "buffer_scatter: x ", x.shape().str(), ", buffer ", buffer.shape().str());
  const int B = int(x.dim(0));
  const std::int64_t per = x.numel() / std::max<std::int64_t>(B, 1);
  JEM_CHECK(buffer.numel() / buffer.dim(0) == per, "buffer_scatter: x ", x.shape().str(),
            " and buffer ", buffer.shape().str(), " hold different samples");
  check_index(index, B, device(), "buffer_scatter", "index");
  check_slots(index, nullptr, buffer.dim(0), "buffer_scatter");
  buffer_scatter_impl(B, per, x.data<float>(), index.data<std::int32_t>(), buffer.data<float>());
}

void Backend::sgld_step(const Tensor& x, const Tensor& grad, float step_size, float noise_std,
                        bool clamp, const NoiseKey& key) {
  check_tensor(x, "sgld_step", "x");
  check_tensor(grad, "sgld_step", "grad");
  check_nchw(x, "sgld_step", "x");
  check_nchw(grad, "sgld_step", "grad");
  JEM_CHECK(x.shape() == grad.shape() && x.shape().rank() >= 1, "sgld_step: x ",
            x.shape().str(), " vs grad ", grad.shape().str());
  const int B = int(x.dim(0));
  sgld_step_impl(B, x.numel() / std::max<std::int64_t>(B, 1), x.data<float>(), grad.data<float>(),
                 step_size, noise_std, clamp, key);
}

}  // namespace jem
