<?php
/* Helpers shared by the PNP4Nagios graph templates of nova-libvirt-checks (libvirtd.php,
 * libvirt_instances.php, nova_hypervisors.php), which include this file: install it beside
 * them. It defines closures in the including template's scope (where PNP sets $RRDFILE, $DS,
 * $WARN, $CRIT, ...); a template may set $nlc_legend_width before including it.
 */
if (!isset($nlc_legend_width)) { $nlc_legend_width = 24; }
$nlc_palette = array('#1F78B4', '#33A02C', '#E31A1C', '#FF7F00', '#6A3D9A', '#B15928',
                     '#A6CEE3', '#B2DF8A', '#FB9A99', '#FDBF6F', '#CAB2D6', '#8C564B',
                     '#E377C2', '#17BECF', '#BCBD22', '#7F7F7F');

$nlc_text = function ($text) {
    return str_replace(array('"', ':'), array("'", '\:'), $text);
};
$nlc_def = function ($vname, $i) use (&$RRDFILE, &$DS) {
    return "DEF:$vname=" . $RRDFILE[$i] . ":" . $DS[$i] . ":AVERAGE ";
};
/* a colour per label, the same from run to run: its hash picks a palette slot; in sorted
   order, a label whose slot is taken moves to the next free one */
$nlc_colours = function ($labels) use ($nlc_palette) {
    $labels = array_values($labels);
    sort($labels, SORT_STRING);
    $n = count($nlc_palette);
    $taken = array();
    $out = array();
    foreach ($labels as $label) {
        if (count($taken) >= $n) {
            $taken = array();
        }
        $slot = abs(crc32($label)) % $n;
        while (isset($taken[$slot])) {
            $slot = ($slot + 1) % $n;
        }
        $taken[$slot] = true;
        $out[$label] = $nlc_palette[$slot];
    }
    return $out;
};
/* a threshold for people: (100000000, 1000, 'B/s') -> "100 MB/s",
   (68719476736, 1024, 'B') -> "64 GiB", (90, 0, '%') -> "90%" */
$nlc_amount = function ($value, $base, $unit) {
    $v = (float) $value;
    $prefixes = array('', 'k', 'M', 'G', 'T', 'P');
    $p = 0;
    while ($base && abs($v) >= $base && $p < 5) {
        $v /= $base;
        $p++;
    }
    $text = rtrim(rtrim(sprintf('%.2f', $v), '0'), '.');
    $prefix = $p ? $prefixes[$p] . ($base == 1024 ? 'i' : '') : '';
    $glue = ($prefix === '' && ($unit === '' || $unit[0] == '%' || $unit[0] == '/')) ? '' : ' ';
    return $text . $glue . $prefix . $unit;
};
/* HRULEs at the warning and critical thresholds of data source $i: a plain value or the
   upper bound of a range alerts above, the lower bound below; an inside (@) range between */
$nlc_thresholds = function ($i, $unit, $what = '', $base = 0) use (&$WARN, &$WARN_MIN, &$WARN_MAX, &$WARN_RANGE_TYPE, &$CRIT, &$CRIT_MIN, &$CRIT_MAX, &$CRIT_RANGE_TYPE, $nlc_amount) {
    $out = '';
    foreach (array(array('warning', '#FFC000', $WARN, $WARN_MIN, $WARN_MAX, $WARN_RANGE_TYPE),
                   array('critical', '#FF0000', $CRIT, $CRIT_MIN, $CRIT_MAX, $CRIT_RANGE_TYPE)) as $t) {
        $inside = is_array($t[5]) && isset($t[5][$i]) && $t[5][$i] == 'inside';
        foreach (array(array($t[2], 'above'), array($t[3], $inside ? 'from' : 'below'),
                       array($t[4], $inside ? 'to' : 'above')) as $bound) {
            $source = $bound[0];
            if (is_array($source) && isset($source[$i]) && is_numeric($source[$i])) {
                $shown = str_replace(':', '\:', $nlc_amount($source[$i], $base, $unit));
                $out .= "HRULE:" . $source[$i] . $t[1] . ":\"" . trim("$what " . $t[0]) . " " .
                    $bound[1] . " $shown\\n\" ";
            }
        }
    }
    return $out;
};
/* one value, drawn as $draw (LINE1, LINE2, AREA, or SHADE: a translucent area under a line),
   with its last, average and max */
$nlc_series = function ($vname, $i, $colour, $legend, $format, $draw = 'LINE1') use ($nlc_def, $nlc_text, $nlc_legend_width) {
    $legend = $nlc_text(sprintf("%-{$nlc_legend_width}s", $legend));
    $shape = $draw == 'SHADE' ? "AREA:$vname$colour" . "40 LINE1" : $draw;
    return $nlc_def($vname, $i) .
        "$shape:$vname$colour:\"$legend\" " .
        "GPRINT:$vname:LAST:\"last $format\" " .
        "GPRINT:$vname:AVERAGE:\"avg $format\" " .
        "GPRINT:$vname:MAX:\"max $format\\n\" ";
};
