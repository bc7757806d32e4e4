/* tests/test_network.py: get_current_rate of each learning-rate policy, written for darkpy as a C model of darknet's arithmetic (float fields, double libm). */
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
/* our own model of the C arithmetic of a learning-rate schedule: float fields, double libm */
typedef enum {CONSTANT, STEP, EXP, POLY, STEPS, SIG} pol;
float rate(pol p, size_t seen, int batch, int subdiv, float lr, float power, int burn_in,
           float scale, int step, float gamma, int max_batches, int nsteps, int *steps, float *scales){
    size_t batch_num = seen/(batch*subdiv);
    if (batch_num < burn_in) return lr * pow((float)batch_num / burn_in, power);
    switch(p){
    case CONSTANT: return lr;
    case STEP: return lr * pow(scale, batch_num/step);
    case STEPS: { float r = lr; for(int i = 0; i < nsteps; ++i){ if(steps[i] > batch_num) return r; r *= scales[i]; } return r; }
    case EXP: return lr * pow(gamma, batch_num);
    case POLY: return lr * pow(1 - (float)batch_num / max_batches, power);
    case SIG: return lr * (1./(1.+exp(gamma*(batch_num - step))));
    }
    return lr;
}
int main(){
    int steps[3] = {3, 7, 20}; float scales[3] = {.1f, .5f, .25f};
    size_t seens[] = {0, 2, 6, 14, 16, 30, 64, 1000, 12345};
    for (int k = 0; k < 9; ++k){
        size_t s = seens[k];
        printf("%zu %a %a %a %a %a %a %a\n", s,
            rate(CONSTANT, s, 2, 1, .001f, 4, 0, 0, 0, 0, 0, 0, 0, 0),
            rate(STEP, s, 2, 1, .01f, 4, 0, .7f, 3, 0, 0, 0, 0, 0),
            rate(STEPS, s, 2, 1, .01f, 4, 0, 0, 0, 0, 0, 3, steps, scales),
            rate(EXP, s, 2, 1, .01f, 4, 0, 0, 0, .93f, 0, 0, 0, 0),
            rate(POLY, s, 2, 1, .01f, 4.f, 0, 0, 0, 0, 5000, 0, 0, 0),
            rate(SIG, s, 2, 1, .01f, 4, 0, 0, 5, .31f, 0, 0, 0, 0),
            rate(STEPS, s, 2, 1, .01f, 2.5f, 4, 0, 0, 0, 0, 3, steps, scales));
    }
}
