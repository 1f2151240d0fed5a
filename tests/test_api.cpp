// The operator contract of docs/design.md, checked at compile time for every public layer on
// every backend built: check_forward before anything is allocated, workspace_size(tokens) that
// sizes forward, backward_workspace_size(tokens), forward(x, y, ws[, stream]), a const
// backward(x, dy, dx, grads, ws[, stream]), make_grads(), params() and the counts. A layer that
// drifts from it fails to compile here, not in a user's engine.
#include <gtest/gtest.h>

#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffnkit/ffnkit.hpp"

namespace ffnkit {
namespace {

template <class...>
using void_t = void;

template <class L>
using T_ = typename L::Scalar;
template <class L>
using X = MatrixView<const T_<L>>;
template <class L>
using Y = MatrixView<T_<L>>;

// Each trait is true when the expression is well formed on a const (or, for params(), mutable)
// layer and has the contract's result type.
#define FFNKIT_CONTRACT_TRAIT(Name, Expr, Result) \
  template <class L, class = void>                \
  struct Name : std::false_type {};               \
  template <class L>                              \
  struct Name<L, void_t<decltype(Expr)>> : std::is_same<decltype(Expr), Result> {};

FFNKIT_CONTRACT_TRAIT(HasWorkspaceSize, std::declval<const L&>().workspace_size(index_t{}),
                      std::size_t)
FFNKIT_CONTRACT_TRAIT(HasBackwardWorkspaceSize,
                      std::declval<const L&>().backward_workspace_size(index_t{}), std::size_t)
FFNKIT_CONTRACT_TRAIT(HasCheckForward,
                      std::declval<const L&>().check_forward(std::declval<X<L>>(),
                                                             std::declval<Y<L>>(), Workspace{}),
                      void)
FFNKIT_CONTRACT_TRAIT(HasForward,
                      std::declval<const L&>().forward(std::declval<X<L>>(), std::declval<Y<L>>(),
                                                       Workspace{},
                                                       std::declval<const typename L::Stream&>()),
                      void)
FFNKIT_CONTRACT_TRAIT(HasForwardWithoutStream,
                      std::declval<const L&>().forward(std::declval<X<L>>(), std::declval<Y<L>>(),
                                                       Workspace{}),
                      void)
FFNKIT_CONTRACT_TRAIT(HasBackward,
                      std::declval<const L&>().backward(std::declval<X<L>>(), std::declval<X<L>>(),
                                                        std::declval<Y<L>>(),
                                                        std::declval<typename L::Grads&>(),
                                                        Workspace{},
                                                        std::declval<const typename L::Stream&>()),
                      void)
FFNKIT_CONTRACT_TRAIT(HasMakeGrads, std::declval<const L&>().make_grads(), typename L::Grads)
FFNKIT_CONTRACT_TRAIT(HasParams, std::declval<L&>().params(), std::vector<ParamView<T_<L>>>)
FFNKIT_CONTRACT_TRAIT(HasParameterCount, std::declval<const L&>().parameter_count(), index_t)
FFNKIT_CONTRACT_TRAIT(HasFlopsPerToken, std::declval<const L&>().flops_per_token(), double)
#undef FFNKIT_CONTRACT_TRAIT

// Gradients live where the layer runs: GradList<T, Backend>.
template <class L>
constexpr bool grads_on_backend() {
  return std::is_same<typename L::Grads, GradList<T_<L>, typename L::Backend>>::value;
}

template <class L>
constexpr bool meets_contract() {
  static_assert(HasWorkspaceSize<L>::value, "workspace_size(tokens) -> std::size_t");
  static_assert(HasBackwardWorkspaceSize<L>::value, "backward_workspace_size(tokens)");
  static_assert(HasCheckForward<L>::value, "check_forward(x, y, ws) const");
  static_assert(HasForward<L>::value, "forward(x, y, ws, stream) const");
  static_assert(HasForwardWithoutStream<L>::value, "forward(x, y, ws) const");
  static_assert(HasBackward<L>::value, "backward(x, dy, dx, grads, ws, stream) const");
  static_assert(HasMakeGrads<L>::value, "make_grads() const -> Grads");
  static_assert(HasParams<L>::value, "params() -> std::vector<ParamView<T>>");
  static_assert(HasParameterCount<L>::value, "parameter_count() -> index_t");
  static_assert(HasFlopsPerToken<L>::value, "flops_per_token() -> double");
  static_assert(grads_on_backend<L>(), "Grads is GradList<T, Backend>");
  return true;
}

template <class T, class B>
constexpr bool linear_families_meet_contract() {
  return meets_contract<DenseLinear<T, B>>() && meets_contract<DenseFFN<T, B>>() &&
         meets_contract<LowRankLinear<T, B>>() && meets_contract<BlockDiagonalLinear<T, B>>() &&
         meets_contract<BlockDenseLinear<T, B>>() && meets_contract<BlockShuffleLinear<T, B>>() &&
         meets_contract<StructuredFFN<LowRankLinear<T, B>, BlockShuffleLinear<T, B>>>();
}

static_assert(linear_families_meet_contract<float, Cpu>(), "");
static_assert(linear_families_meet_contract<double, Cpu>(), "");
static_assert(meets_contract<PreMerged<LowRankLinear<float, Cpu>>>(), "");
#if defined(FFNKIT_WITH_CUDA_EMU)
static_assert(linear_families_meet_contract<float, CudaEmu>(), "");
static_assert(linear_families_meet_contract<__half, CudaEmu>(), "");
static_assert(linear_families_meet_contract<__nv_bfloat16, CudaEmu>(), "");
#endif
#if defined(FFNKIT_WITH_CUDA)
static_assert(linear_families_meet_contract<float, Cuda>(), "");
static_assert(linear_families_meet_contract<__half, Cuda>(), "");
static_assert(linear_families_meet_contract<__nv_bfloat16, Cuda>(), "");
#endif

// can_implement answers without throwing, with the reason, and allocates nothing.
TEST(OperatorContract, CanImplementGivesTheReasonInsteadOfThrowing) {
  const auto layer = LowRankLinear<float, Cpu>::random(16, 24, 4, 1);
  std::vector<float> x(3 * 16), y(3 * 24);
  std::string why;
  EXPECT_TRUE(can_implement(layer, &why, MatrixView<const float>(x.data(), 3, 16),
                            MatrixView<float>(y.data(), 3, 24), Workspace{}));
  EXPECT_FALSE(can_implement(layer, &why, MatrixView<const float>(x.data(), 3, 15),
                             MatrixView<float>(y.data(), 3, 24), Workspace{}));
  EXPECT_NE(why.find("x.cols = 15"), std::string::npos) << why;
  std::vector<unsigned char> small(layer.workspace_size(3) - 1);
  EXPECT_FALSE(can_implement(layer, &why, MatrixView<const float>(x.data(), 3, 16),
                             MatrixView<float>(y.data(), 3, 24),
                             Workspace{small.data(), small.size()}));
  EXPECT_NE(why.find("workspace_size(x.rows)"), std::string::npos) << why;
}

}  // namespace
}  // namespace ffnkit
