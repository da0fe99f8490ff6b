// lion family: one in-place Lion step over two float32 tensors (params, grads, momenta).
#include <cmath>
#include <cstdio>
#include <vector>

#include "check.h"
#include "fastnorm/lion.h"

namespace example {

bool check_lion() {
  std::vector<float> p1 = {0.5f, -1.0f, 2.0f}, g1 = {1.0f, 0.0f, -3.0f}, m1 = {0.0f, 0.0f, 1.0f};
  std::vector<float> p2 = {1.0f, 1.0f}, g2 = {-0.5f, 0.25f}, m2 = {0.1f, -0.1f};
  const std::vector<float> p_old[2] = {p1, p2}, g_old[2] = {g1, g2}, m_old[2] = {m1, m2};
  // {param, grad, exp_avg, master, numel, slot}
  fastnorm::lion::LionTensor tensors[2] = {{p1.data(), g1.data(), m1.data(), nullptr, 3, 0},
                                           {p2.data(), g2.data(), m2.data(), nullptr, 2, 1}};
  fastnorm::lion::LionStepParams lion;
  lion.tensors = tensors;
  lion.n_tensors = 2;
  lion.lr = 0.01;
  lion.weight_decay = 0.1;  // beta1 = 0.9, beta2 = 0.99 by default; decoupled decay lr * wd
  if (!call_ok("lion::step", fastnorm::lion::step(lion))) return false;

  // p <- p * (1 - lr * wd) - lr * sign(beta1 * m + (1 - beta1) * g);  m <- beta2 * m + (1 - beta2) * g
  std::vector<float> got_p, got_m;
  std::vector<double> want_p, want_m;
  const std::vector<float>* p_new[2] = {&p1, &p2};
  const std::vector<float>* m_new[2] = {&m1, &m2};
  for (int t = 0; t < 2; ++t)
    for (size_t i = 0; i < p_old[t].size(); ++i) {
      const double c = 0.9 * m_old[t][i] + 0.1 * g_old[t][i];
      const double sign = c > 0 ? 1.0 : (c < 0 ? -1.0 : 0.0);
      want_p.push_back(p_old[t][i] * (1.0 - 0.01 * 0.1) - 0.01 * sign);
      want_m.push_back(0.99 * m_old[t][i] + 0.01 * g_old[t][i]);
      got_p.push_back((*p_new[t])[i]);
      got_m.push_back((*m_new[t])[i]);
    }
  std::printf("lion: one step over tensors of 3 and 2 elements\n");
  bool ok = true;
  ok &= report("lion::step params", max_error(got_p, want_p));
  ok &= report("lion::step exp_avg", max_error(got_m, want_m));
  return ok;
}

}  // namespace example
