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
#include "support/harness.hpp"

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
// A norm-fused layer's forward with its optional `normalized` side output ([tokens x in]).
FFNKIT_CONTRACT_TRAIT(HasNormalizedForward,
                      std::declval<const L&>().forward(std::declval<X<L>>(), std::declval<Y<L>>(),
                                                       Workspace{}, std::declval<Y<L>>(),
                                                       std::declval<const typename L::Stream&>()),
                      void)
// Softmax·V's inputs: scores s, values v, output y, additive mask; sized by (queries, keys, dim).
FFNKIT_CONTRACT_TRAIT(HasAttentionWorkspaceSize,
                      std::declval<const L&>().workspace_size(index_t{}, index_t{}, index_t{}),
                      std::size_t)
FFNKIT_CONTRACT_TRAIT(HasAttentionCheckForward,
                      std::declval<const L&>().check_forward(std::declval<X<L>>(),
                                                             std::declval<X<L>>(),
                                                             std::declval<Y<L>>(),
                                                             std::declval<X<L>>(), Workspace{}),
                      void)
FFNKIT_CONTRACT_TRAIT(HasAttentionForward,
                      std::declval<const L&>().forward(std::declval<X<L>>(), std::declval<X<L>>(),
                                                       std::declval<Y<L>>(), std::declval<X<L>>(),
                                                       Workspace{},
                                                       std::declval<const typename L::Stream&>()),
                      void)
// The FFF's backward takes the leaves its forward recorded: backward(x, leaves, dy, dx, grads, ws,
// stream).
FFNKIT_CONTRACT_TRAIT(HasLeavesBackward,
                      std::declval<const L&>().backward(std::declval<X<L>>(),
                                                        std::declval<const std::int32_t*>(),
                                                        std::declval<X<L>>(), std::declval<Y<L>>(),
                                                        std::declval<typename L::Grads&>(),
                                                        Workspace{},
                                                        std::declval<const typename L::Stream&>()),
                      void)
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

// SelfGuided meets the contract but for forward, which is not const: it draws the stochastic
// decision and records it (docs/math.md §5.3); recompute() is its const replay.
template <class L>
constexpr bool meets_contract_with_stateful_forward() {
  static_assert(HasWorkspaceSize<L>::value && HasBackwardWorkspaceSize<L>::value, "sizes");
  static_assert(HasCheckForward<L>::value, "check_forward(x, y, ws) const");
  static_assert(!HasForward<L>::value, "forward draws a decision: not const");
  static_assert(HasBackward<L>::value, "backward(x, dy, dx, grads, ws, stream) const");
  static_assert(HasMakeGrads<L>::value && HasParams<L>::value && HasParameterCount<L>::value,
                "make_grads, params, parameter_count");
  static_assert(grads_on_backend<L>(), "Grads is GradList<T, Backend>");
  return true;
}

template <class T, class B>
constexpr bool families_meet_contract() {
  return linear_families_meet_contract<T, B>() &&
         meets_contract_with_stateful_forward<SelfGuided<BlockDenseLinear<T, B>>>();
}

static_assert(families_meet_contract<float, Cpu>(), "");
static_assert(families_meet_contract<double, Cpu>(), "");
static_assert(meets_contract<PreMerged<LowRankLinear<float, Cpu>>>(), "");
#if defined(FFNKIT_WITH_CUDA_EMU)
static_assert(families_meet_contract<float, CudaEmu>(), "");
static_assert(families_meet_contract<__half, CudaEmu>(), "");
static_assert(families_meet_contract<__nv_bfloat16, CudaEmu>(), "");
#endif
#if defined(FFNKIT_WITH_CUDA)
static_assert(families_meet_contract<float, Cuda>(), "");
static_assert(families_meet_contract<__half, Cuda>(), "");
static_assert(families_meet_contract<__nv_bfloat16, Cuda>(), "");
#endif

// The deferred-normalization family (docs/math.md §7) is inference only: the contract without
// backward, make_grads or params. RMSNormLinear and LayerNormLinear take x, y and an optional
// `normalized` side output; SoftmaxLinear takes attention's inputs.
template <class L>
constexpr bool meets_inference_contract() {
  static_assert(HasWorkspaceSize<L>::value, "workspace_size(tokens) -> std::size_t");
  static_assert(HasCheckForward<L>::value, "check_forward(x, y, ws) const");
  static_assert(HasForward<L>::value && HasForwardWithoutStream<L>::value,
                "forward(x, y, ws[, stream]) const");
  static_assert(HasNormalizedForward<L>::value, "forward(x, y, ws, normalized, stream) const");
  static_assert(HasParameterCount<L>::value && HasFlopsPerToken<L>::value, "counts");
  static_assert(
      !HasBackward<L>::value && !HasBackwardWorkspaceSize<L>::value && !HasMakeGrads<L>::value,
      "no backward");
  return true;
}
template <class L>
constexpr bool meets_attention_contract() {
  static_assert(HasAttentionWorkspaceSize<L>::value, "workspace_size(queries, keys, dim)");
  static_assert(HasAttentionCheckForward<L>::value, "check_forward(s, v, y, mask, ws) const");
  static_assert(HasAttentionForward<L>::value, "forward(s, v, y, mask, ws, stream) const");
  static_assert(!HasBackward<L>::value, "no backward");
  return true;
}
template <class T, class B>
constexpr bool norm_family_meets_contract() {
  return meets_inference_contract<RMSNormLinear<T, B>>() &&
         meets_inference_contract<LayerNormLinear<T, B>>() &&
         meets_attention_contract<SoftmaxLinear<T, B>>();
}
// On every (scalar, backend) combination built (tests/support/harness.hpp).
template <class... Combos>
constexpr bool norm_family_meets_contract_everywhere() {
  return (norm_family_meets_contract<typename Combos::Scalar, typename Combos::Backend>() && ...);
}
static_assert(norm_family_meets_contract_everywhere<FFNKIT_ALL_COMBOS>(), "");

// The fast feedforward layer (docs/math.md §6): the whole contract, its backward taking the
// recorded leaves.
template <class L>
constexpr bool meets_fff_contract() {
  static_assert(HasWorkspaceSize<L>::value && HasBackwardWorkspaceSize<L>::value, "sizes");
  static_assert(HasCheckForward<L>::value, "check_forward(x, y, ws) const");
  static_assert(HasForward<L>::value && HasForwardWithoutStream<L>::value,
                "forward(x, y, ws[, stream]) const");
  static_assert(HasLeavesBackward<L>::value,
                "backward(x, leaves, dy, dx, grads, ws, stream) const");
  static_assert(HasMakeGrads<L>::value && HasParams<L>::value, "make_grads() const, params()");
  static_assert(HasParameterCount<L>::value && HasFlopsPerToken<L>::value, "counts");
  static_assert(grads_on_backend<L>(), "Grads is GradList<T, Backend>");
  return true;
}
template <class... Combos>
constexpr bool fff_meets_contract() {
  return (
      meets_fff_contract<FastFeedForward<typename Combos::Scalar, typename Combos::Backend>>() &&
      ...);
}
static_assert(fff_meets_contract<FFNKIT_ALL_COMBOS>(), "");

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
