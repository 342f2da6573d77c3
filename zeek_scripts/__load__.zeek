##! dpack: exports the first packets of each connection to the dpack scorer and logs its verdicts.
@load ./contract
@load ./main
