// The backward pass's gradient-ready hook and the gradient buckets built on it (the overlapped
// all-reduce of data parallelism). The real multi-process reduction is tested under mpirun
// (tests/mpi/run_case.sh split: buckets against one all-reduce, bit for bit).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "jem/grad_buckets.hpp"
#include "jem/wide_resnet.hpp"
#include "test_support.hpp"

using namespace jem;

namespace {

// A WRN-16-1 (two blocks per stage, shortcuts in the first block of stages 2 and 3) with a
// labelled batch: forward, then dlogits from the cross-entropy.
struct Net {
  std::unique_ptr<Backend> be = make_cpu_backend(1);
  WideResNet m{WrnConfig{16, 1, 3, 8, 4}, *be, 3};
  Tensor dl;
  Net() {
    m.init(7);
    const Tensor x = be->from_vector(jem::test::random_vector(3 * 3 * 8 * 8, 12), Shape{3, 3, 8, 8});
    const Tensor labels = be->empty(Shape{3}, DType::I32);
    const std::vector<std::int32_t> y{1, 0, 3};
    be->upload_i32(y.data(), labels);
    dl = be->empty(Shape{3, 4});
    const Tensor row = be->empty(Shape{3});
    be->cross_entropy_forward_backward(m.forward(x), labels, row, dl, 1.0f);
  }
  std::size_t n() const { return std::size_t(m.num_params()); }
  std::vector<float> grad() const { return be->to_vector(m.grad_buffer()); }
};

// A communicator that records each started all-reduce (offset into the gradient, length) and
// "reduces" it as two ranks with equal gradients would: it doubles the elements.
class RecordingComm : public Communicator {
 public:
  explicit RecordingComm(const Tensor& grad) : base_(grad.data<float>()) {}
  struct Call {
    std::size_t begin, size;
  };
  std::vector<Call> calls;
  int finishes = 0, unfinished = 0;
  // What the gradient held at each start: must not change afterwards, or the bucket went early.
  std::vector<std::vector<float>> snapshots;

  int rank() const override { return 0; }
  int world() const override { return 2; }
  int local_rank() const override { return 0; }
  int local_world() const override { return 2; }
  std::string name() const override { return "recording"; }
  void all_reduce(const Tensor&, ReduceOp) override { ADD_FAILURE() << "buckets must use all_reduce_start"; }
  void all_reduce_start(const Tensor& t, ReduceOp op) override {
    EXPECT_EQ(op, ReduceOp::Sum);
    calls.push_back({std::size_t(t.data<float>() - base_), std::size_t(t.numel())});
    float* p = t.data<float>();
    snapshots.emplace_back(p, p + t.numel());
    for (std::int64_t i = 0; i < t.numel(); ++i) p[i] *= 2.0f;
    ++unfinished;
  }
  void all_reduce_finish() override {
    ++finishes;
    unfinished = 0;
  }
  void broadcast(const Tensor&, int) override {}
  void all_reduce_host(double*, int, ReduceOp) override {}
  void broadcast_host(void*, std::size_t, int) override {}
  void all_gather_host(const float*, std::size_t, float*) override {}
  void gather_host(const float*, std::size_t, float*, int) override {}
  void barrier() override {}
  void abort(const std::string&, int) override {}

 private:
  const float* base_;
};

}  // namespace

// Every reported suffix [first, n) is final when reported: later stages of the backward pass do
// not change it. `first` decreases strictly, from the head's first parameter to 0.
TEST(GradReadyHook, ReportsFinalSuffixesHeadFirst) {
  Net net;
  const std::size_t n = net.n();
  std::vector<std::size_t> firsts;
  std::vector<std::vector<float>> at_report;  // the whole gradient at each report
  net.m.set_grad_ready_hook([&](std::size_t first) {
    firsts.push_back(first);
    at_report.push_back(net.grad());
  });
  net.be->fill(net.m.grad_buffer(), 0.0f);
  net.m.backward(net.dl, Tensor());
  const std::vector<float> final_grad = net.grad();
  // The head, 6 blocks, the stem.
  ASSERT_EQ(firsts.size(), 8u);
  EXPECT_EQ(firsts.front(), net.m.params()[net.m.params().size() - 2].offset);  // class_output.weight
  EXPECT_EQ(firsts.back(), 0u);
  for (std::size_t i = 1; i < firsts.size(); ++i) EXPECT_LT(firsts[i], firsts[i - 1]) << "report " << i;
  for (std::size_t i = 0; i < firsts.size(); ++i) {
    SCOPED_TRACE("report " + std::to_string(i) + ", first " + std::to_string(firsts[i]));
    // Final when reported ...
    EXPECT_EQ(0, std::memcmp(at_report[i].data() + firsts[i], final_grad.data() + firsts[i],
                             (n - firsts[i]) * sizeof(float)));
    // ... and reported as soon as it was: the next stage's gradients were still zero then.
    if (i + 1 < firsts.size()) {
      double next_stage = 0, next_final = 0;
      for (std::size_t j = firsts[i + 1]; j < firsts[i]; ++j) {
        next_stage += std::fabs(at_report[i][j]);
        next_final += std::fabs(final_grad[j]);
      }
      EXPECT_EQ(next_stage, 0.0);
      EXPECT_GT(next_final, 0.0);
    }
  }
  // Input-only backward (SGLD) does no parameter work and reports nothing.
  firsts.clear();
  const Tensor dx = net.be->empty(Shape{3, 3, 8, 8});
  net.m.backward_input(net.dl, dx);
  EXPECT_TRUE(firsts.empty());
}

// The buckets cover the gradient exactly once, in contiguous ranges from the end down to 0, each
// (but finish()'s remainder) at least the bucket size, each started only once its range was
// final; the result is the whole buffer reduced once (doubled, by the recording communicator).
TEST(GradBuckets, CoverTheGradientOnceWithFinalRanges) {
  for (const std::size_t bucket : {std::size_t(0), std::size_t(1), std::size_t(500), std::size_t(3000),
                                   std::size_t(1) << 30}) {
    SCOPED_TRACE("bucket floats " + std::to_string(bucket));
    Net net;
    const std::size_t n = net.n();
    net.be->fill(net.m.grad_buffer(), 0.0f);
    net.m.backward(net.dl, Tensor());
    const std::vector<float> plain = net.grad();

    RecordingComm comm(net.m.grad_buffer());
    GradBuckets buckets(comm, net.m.grad_buffer(), bucket);
    net.m.set_grad_ready_hook([&](std::size_t first) { buckets.ready(first); });
    buckets.begin();
    net.be->fill(net.m.grad_buffer(), 0.0f);
    net.m.backward(net.dl, Tensor());
    EXPECT_EQ(comm.finishes, 0);
    buckets.finish();
    EXPECT_EQ(comm.finishes, 1);
    ASSERT_FALSE(comm.calls.empty());
    EXPECT_EQ(buckets.buckets(), int(comm.calls.size()));
    std::size_t end = n;
    for (std::size_t i = 0; i < comm.calls.size(); ++i) {
      const auto& c = comm.calls[i];
      EXPECT_EQ(c.begin + c.size, end) << "bucket " << i << " is not contiguous with the one before";
      if (i + 1 < comm.calls.size()) {
        EXPECT_GE(c.size, bucket) << "bucket " << i;
      }
      // Started on final values: they equal the plain backward's.
      EXPECT_EQ(0, std::memcmp(comm.snapshots[i].data(), plain.data() + c.begin, c.size * sizeof(float)))
          << "bucket " << i << " started before its gradients were final";
      end = c.begin;
    }
    EXPECT_EQ(end, 0u);
    if (bucket == 0 || bucket >= n) {
      EXPECT_EQ(comm.calls.size(), 1u);
    }
    if (bucket == 1) {
      EXPECT_EQ(comm.calls.size(), 8u);  // one per report
    }
    const std::vector<float> reduced = net.grad();
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(reduced[i], 2.0f * plain[i]) << "element " << i;
    // A second pass starts over.
    buckets.begin();
    comm.calls.clear();
    comm.snapshots.clear();
    net.be->fill(net.m.grad_buffer(), 0.0f);
    net.m.backward(net.dl, Tensor());
    buckets.finish();
    EXPECT_EQ(comm.calls.empty() ? 1 : comm.calls.back().begin, 0u);
  }
}

TEST(GradBuckets, BucketSizeInMiB) {
  EXPECT_EQ(bucket_floats_for_mib(0), 0u);
  EXPECT_EQ(bucket_floats_for_mib(1), 262144u);
  EXPECT_EQ(bucket_floats_for_mib(25), 25u * 262144u);
}
