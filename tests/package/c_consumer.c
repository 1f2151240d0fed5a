/* The C API through the installed package: a 2 x 3 nn.Linear on one token. */
#include <ffnkit/ffnkit_c.h>
#include <math.h>
#include <stdio.h>

int main(void) {
  const float w[6] = {1, 2, 3, -1, 0, 4}, b[2] = {0.5f, -0.5f}, x[3] = {1, -1, 2};
  float y[2];
  ffnkit_layer* layer = NULL;
  if (ffnkit_dense_linear_create(3, 2, w, b, &layer) != FFNKIT_OK ||
      ffnkit_layer_forward(layer, x, 1, 3, y, 2, NULL, 0) != FFNKIT_OK) {
    fprintf(stderr, "c_consumer: %s\n", ffnkit_last_error());
    return 1;
  }
  ffnkit_layer_destroy(layer);
  printf("c_consumer (ffnkit %s): y = %g %g\n", ffnkit_version(), y[0], y[1]);
  return fabsf(y[0] - 5.5f) < 1e-6f && fabsf(y[1] - 6.5f) < 1e-6f ? 0 : 1;
}
