// Shape checks of the optimizer ops.
#include "jem/backend.hpp"

namespace jem {

void Backend::adam_step(const Tensor& params, const Tensor& grads, const Tensor& m,
                        const Tensor& v, const AdamStep& step) {
  for (auto [t, what] : {std::pair{&params, "params"}, {&grads, "grads"}, {&m, "m"}, {&v, "v"}}) {
    check_tensor(*t, "adam_step", what);
    JEM_CHECK(t->numel() == params.numel(), "adam_step: '", what, "' has ", t->numel(),
              " elements, params ", params.numel());
  }
  adam_step_impl(params.numel(), params.data<float>(), grads.data<float>(), m.data<float>(),
                 v.data<float>(), step);
}

void Backend::sgd_step(const Tensor& params, const Tensor& grads, const Tensor& momentum_buf,
                       float lr, float momentum, float weight_decay) {
  for (auto [t, what] : {std::pair{&params, "params"}, {&grads, "grads"}, {&momentum_buf, "momentum"}}) {
    check_tensor(*t, "sgd_step", what);
    JEM_CHECK(t->numel() == params.numel(), "sgd_step: '", what, "' has ", t->numel(),
              " elements, params ", params.numel());
  }
  sgd_step_impl(params.numel(), params.data<float>(), grads.data<float>(),
                momentum_buf.data<float>(), lr, momentum, weight_decay);
}

double Backend::sum_squares(const Tensor& x) {
  check_tensor(x, "sum_squares", "x");
  return sum_squares_impl(x.numel(), x.data<float>());
}

void Backend::scale(const Tensor& x, float alpha) {
  check_tensor(x, "scale", "x");
  scale_impl(x.numel(), x.data<float>(), alpha);
}

}  // namespace jem
