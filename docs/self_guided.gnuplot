set terminal pngcairo size 1500,500 font ',10'
set output 'docs/self_guided.png'
set datafile separator ','
set key top right
set grid
set multiplot layout 1,3
set yrange [1.9:3.0]
set title 'validation loss (nats/char)'
set xlabel 'training FLOPs (1e12)'
plot 'docs/self_guided_curves.csv' using ($3/1e12):(strcol(1) eq 'dense' ? $5 : 1/0) with lines lw 2 title 'dense', 'docs/self_guided_curves.csv' using ($3/1e12):(strcol(1) eq 'lowrank' ? $5 : 1/0) with lines lw 2 title 'lowrank', 'docs/self_guided_curves.csv' using ($3/1e12):(strcol(1) eq 'lowrank-guided' ? $5 : 1/0) with lines lw 2 title 'lowrank-guided', 'docs/self_guided_curves.csv' using ($3/1e12):(strcol(1) eq 'blockdense' ? $5 : 1/0) with lines lw 2 title 'blockdense', 'docs/self_guided_curves.csv' using ($3/1e12):(strcol(1) eq 'blockdense-guided' ? $5 : 1/0) with lines lw 2 title 'blockdense-guided'
set title 'validation loss (nats/char)'
set xlabel 'optimizer step'
plot 'docs/self_guided_curves.csv' using 2:(strcol(1) eq 'dense' ? $5 : 1/0) with lines lw 2 title 'dense', 'docs/self_guided_curves.csv' using 2:(strcol(1) eq 'lowrank' ? $5 : 1/0) with lines lw 2 title 'lowrank', 'docs/self_guided_curves.csv' using 2:(strcol(1) eq 'lowrank-guided' ? $5 : 1/0) with lines lw 2 title 'lowrank-guided', 'docs/self_guided_curves.csv' using 2:(strcol(1) eq 'blockdense' ? $5 : 1/0) with lines lw 2 title 'blockdense', 'docs/self_guided_curves.csv' using 2:(strcol(1) eq 'blockdense-guided' ? $5 : 1/0) with lines lw 2 title 'blockdense-guided'
set title 'training loss, mean since the previous point'
set xlabel 'training FLOPs (1e12)'
plot 'docs/self_guided_curves.csv' using ($3/1e12):(strcol(1) eq 'dense' ? $4 : 1/0) with lines lw 2 title 'dense', 'docs/self_guided_curves.csv' using ($3/1e12):(strcol(1) eq 'lowrank' ? $4 : 1/0) with lines lw 2 title 'lowrank', 'docs/self_guided_curves.csv' using ($3/1e12):(strcol(1) eq 'lowrank-guided' ? $4 : 1/0) with lines lw 2 title 'lowrank-guided', 'docs/self_guided_curves.csv' using ($3/1e12):(strcol(1) eq 'blockdense' ? $4 : 1/0) with lines lw 2 title 'blockdense', 'docs/self_guided_curves.csv' using ($3/1e12):(strcol(1) eq 'blockdense-guided' ? $4 : 1/0) with lines lw 2 title 'blockdense-guided'
unset multiplot
