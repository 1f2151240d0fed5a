// Example 03: self-guided training of a structured layer (docs/math.md §5), as a template.
//
// A LowRank layer (rank 4) learns to imitate a fixed dense "teacher" layer by SGD on a squared
// error. Wrapped in SelfGuided, its output during the first half of training is the blend
// alpha W x + (1 - alpha) S(x) + b, with the dense guide W starting at materialize(S); alpha decays
// on a cosine schedule, the dense branch is computed only with probability alpha (the stochastic
// FLOP reduction), and once alpha reaches 0 the guide is dropped and its memory freed. The example
// checks that the loss falls, that alpha follows the schedule, and that dropping the guide changes
// no output. It exits non-zero otherwise.
#include <cmath>
#include <cstdio>
#include <ffnkit/ffnkit.hpp>
#include <vector>

int main() {
  using namespace ffnkit;
  const index_t n = 32, m = 32, rank = 4, tokens = 64, steps = 400;
  const double lr = 0.05;

  // The teacher: a dense layer whose weight has a dominant rank-4 part plus a little noise.
  const auto teacher = LowRankLinear<double>::random(n, m, rank, 11, true, 0.3);
  auto teacher_w = teacher.materialize();
  std::vector<double> noise(teacher_w.size());
  fill_normal(noise.data(), static_cast<index_t>(noise.size()), 12, 0.0, 0.01);
  for (std::size_t i = 0; i < noise.size(); ++i) teacher_w[i] += noise[i];

  SelfGuided<LowRankLinear<double>> student(LowRankLinear<double>::random(n, m, rank, 21),
                                            AlphaSchedule::cosine(steps, 0.5),
                                            /*stochastic=*/true, /*seed=*/7);
  std::vector<double> x(tokens * n), y(tokens * m), target(tokens * m), dy(tokens * m);
  auto grads = student.make_grads();
  Rng data(99);
  double first_loss = 0, last_loss = 0;
  bool schedule_ok = true;
  for (index_t step = 0; step < steps; ++step) {
    for (double& v : x) v = data.normal();
    // target = x Wᵀ + b of the teacher
    for (index_t t = 0; t < tokens; ++t)
      for (index_t i = 0; i < m; ++i) {
        double acc = teacher.bias()[i];
        for (index_t j = 0; j < n; ++j) acc += teacher_w[i * n + j] * x[t * n + j];
        target[t * m + i] = acc;
      }
    const auto xv = make_view<const double>(x.data(), tokens, n);
    student.forward(xv, make_view(y.data(), tokens, m));
    double loss = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      const double e = y[i] - target[i];
      loss += 0.5 * e * e / tokens;
      dy[i] = e / tokens;
    }
    if (step == 0) first_loss = loss;
    last_loss = loss;
    student.backward(xv, make_view<const double>(dy.data(), tokens, m), MatrixView<double>(),
                     grads);
    auto params = student.params();
    for (std::size_t k = 0; k < params.size(); ++k)
      for (index_t i = 0; i < params[k].size; ++i) params[k].data[i] -= lr * grads[k][i];
    // The schedule: cosine from 1 at step 0 to 0 at step 200, and 0 after.
    const double expect = step <= 200 ? 0.5 * (1 + std::cos(3.14159265358979 * step / 200.0)) : 0;
    schedule_ok &= std::abs(student.alpha() - expect) < 1e-12;
    student.step();
    if (student.alpha() == 0.0 && student.has_guide()) {
      // Dropping the guide must not change what the layer computes.
      std::vector<double> before(y.size()), after(y.size());
      student.forward(xv, make_view(before.data(), tokens, m));
      const std::size_t freed = student.guide_bytes();
      student.drop_guide();
      student.forward(xv, make_view(after.data(), tokens, m));
      grads = student.make_grads();
      std::printf("step %lld: alpha reached 0, guide dropped (%zu bytes freed), outputs %s\n",
                  (long long)student.step_count(), freed,
                  before == after ? "unchanged" : "CHANGED");
      schedule_ok &= before == after && student.guide_bytes() == 0;
    }
  }
  std::printf("loss: %.4f at step 0, %.6f at step %lld\n", first_loss, last_loss, (long long)steps);
  const bool ok = schedule_ok && !student.has_guide() && last_loss < 0.05 * first_loss;
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
