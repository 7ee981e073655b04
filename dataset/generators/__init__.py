"""Dataset generators, apart from runtime loading: the embedded synthetic videos (``synthetic``), the shapes videos
(``shapes``) and their shared command-line flags (``cli``). They write videos that the preprocessing reads like
any user's; nothing at training or evaluation time imports them."""
